// The small layers the model families share. Each is loaded from a Weights view and checked against the
// size its config implies; forward is the textbook formula in the activation dtype unless noted.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <optional>
#include <string_view>
#include <utility>

#include "imagetotext/nn/weights.hpp"
#include "imagetotext/quant/quantize.hpp"

namespace imagetotext::nn {

// torch.nn.LayerNorm over the last dimension (weight and bias, as every LayerNorm these models use).
struct LayerNorm {
  at::Tensor weight;
  at::Tensor bias;
  double eps = 1e-5;

  static LayerNorm load(const Weights& weights, std::string_view name, std::int64_t size, double eps);
  at::Tensor operator()(const at::Tensor& x) const;
  // This norm as the input fusion of the linear layer that reads its output (ops::GemmFusion), the normed
  // input also written to `normed` (x's shape) when given: a post-norm layer's residual, with no norm kernel.
  ops::GemmFusion as_linear_input(const std::optional<at::Tensor>& normed = std::nullopt) const {
    ops::GemmFusion fusion;
    fusion.norm_weight = weight;
    fusion.norm_eps = eps;
    fusion.norm_bias = bias;
    fusion.normed_out = normed;
    return fusion;
  }
};

// Llama's RMSNorm: computed in float32, cast back to the input dtype, then scaled by the weight.
struct RMSNorm {
  at::Tensor weight;
  double eps = 1e-6;

  static RMSNorm load(const Weights& weights, std::string_view name, std::int64_t size, double eps);
  at::Tensor operator()(const at::Tensor& x) const;
  // This norm as the input fusion of the linear layer that reads its output (ops::GemmFusion): in a decode
  // step the layer's GEMV norms as it loads, with no kernel of the norm's own.
  ops::GemmFusion as_linear_input() const { return {weight, eps}; }
};

// torch.nn.Embedding: rows of a [num_embeddings, dim] table.
struct Embedding {
  at::Tensor weight;

  static Embedding load(const Weights& weights, std::string_view name, std::int64_t num_embeddings,
                        std::int64_t dim);
  at::Tensor operator()(const at::Tensor& ids) const;
};

}  // namespace imagetotext::nn
