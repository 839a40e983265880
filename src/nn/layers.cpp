#include "imagetotext/nn/layers.hpp"

#include "../ops/layer_ops.hpp"

#include <ATen/ops/embedding.h>
#include <ATen/ops/layer_norm.h>

namespace imagetotext::nn {

LayerNorm LayerNorm::load(const Weights& weights, std::string_view name, std::int64_t size, double eps) {
  const Weights norm = weights[name];
  return LayerNorm{norm.get("weight", {size}), norm.get("bias", {size}), eps};
}

at::Tensor LayerNorm::operator()(const at::Tensor& x) const {
  return at::layer_norm(x, {weight.size(0)}, weight, bias, eps);
}

RMSNorm RMSNorm::load(const Weights& weights, std::string_view name, std::int64_t size, double eps) {
  return RMSNorm{weights[name].get("weight", {size}), eps};
}

at::Tensor RMSNorm::operator()(const at::Tensor& x) const { return ops::rms_norm(x, weight, eps); }

Embedding Embedding::load(const Weights& weights, std::string_view name, std::int64_t num_embeddings,
                          std::int64_t dim) {
  return Embedding{weights[name].get("weight", {num_embeddings, dim})};
}

at::Tensor Embedding::operator()(const at::Tensor& ids) const { return at::embedding(weight, ids); }

}  // namespace imagetotext::nn
