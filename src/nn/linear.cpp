#include "imagetotext/nn/linear.hpp"

#include <ATen/ops/cat.h>
#include <c10/util/Exception.h>
#include <fmt/format.h>

#include "imagetotext/core/error.hpp"

namespace imagetotext::nn {

namespace {
bool matches_module(std::string_view module, std::string_view entry) {
  if (entry.empty()) return false;
  if (module == entry) return true;
  if (module.size() > entry.size() && module.compare(0, entry.size(), entry) == 0 && module[entry.size()] == '.') {
    return true;
  }
  return module.size() > entry.size() && module.ends_with(entry) && module[module.size() - entry.size() - 1] == '.';
}

// The format a layer was saved in, from the tensors bitsandbytes writes beside its weight.
std::optional<Quantization> stored_format(const Weights& layer) {
  if (layer.contains("SCB")) return Quantization::int8;
  if (layer.contains("weight.quant_state.bitsandbytes__nf4")) return Quantization::nf4;
  if (layer.contains("weight.quant_state.bitsandbytes__fp4")) return Quantization::fp4;
  return std::nullopt;
}
}  // namespace

Quantization LinearPolicy::format_for(std::string_view module) const {
  for (const std::string& entry : keep_dense) {
    if (matches_module(module, entry)) return Quantization::none;
  }
  return format;
}

Linear Linear::load(const Weights& weights, std::string_view name, const LinearPolicy& policy, std::int64_t in_features,
                    std::int64_t out_features) {
  const Weights layer = weights[name];
  const std::string module = weights.key(name);
  const Placement& placement = weights.placement();
  std::optional<at::Tensor> bias = layer.get_if("bias");

  std::optional<quant::QuantizedLinear> loaded;
  try {
    if (const auto stored = stored_format(layer)) {
      // Pre-quantized: the stored tensors as they are (integer codes, float32 statistics) on the device.
      // LLM.int8 and weight-only INT8 share one stored layout; the policy picks the matmul.
      Quantization format = *stored;
      if (format == Quantization::int8 && policy.format == Quantization::llm_int8) format = Quantization::llm_int8;
      quant::StateDict state;
      for (const auto& [key, tensor] : layer.raw_tensors()) state.emplace(key, io::to_device(tensor, placement.device));
      if (bias) state["bias"] = *bias;
      loaded.emplace(quant::QuantizedLinear::from_state_dict(state, "", format, policy.options.threshold));
    } else {
      const at::Tensor weight = layer.get("weight");
      if (weight.dim() != 2) {
        throw CheckpointError(fmt::format("checkpoint {}: '{}' must be 2-D, has {} dimensions",
                                          weights.source().string(), layer.key("weight"), weight.dim()));
      }
      loaded.emplace(quant::QuantizedLinear::from_dense(weight, bias, policy.format_for(module), policy.options));
    }
  } catch (const c10::Error& e) {
    throw CheckpointError(fmt::format("checkpoint {}: layer '{}' cannot be loaded: {}", weights.source().string(),
                                      module, e.what_without_backtrace()));
  }
  if ((in_features > 0 && loaded->in_features != in_features) ||
      (out_features > 0 && loaded->out_features != out_features)) {
    throw CheckpointError(fmt::format("checkpoint {}: layer '{}' is {}x{} (out x in) where the config implies {}x{}",
                                      weights.source().string(), module, loaded->out_features, loaded->in_features,
                                      out_features, in_features));
  }
  if (policy.on_load) policy.on_load(module, *loaded);
  return Linear(std::move(*loaded));
}

FusedLinear FusedLinear::load(const Weights& weights, const std::vector<std::string_view>& names,
                              const LinearPolicy& policy, std::int64_t in_features,
                              const std::vector<std::int64_t>& out_features) {
  FusedLinear fused;
  std::vector<const quant::QuantizedLinear*> layers;
  fused.parts_.reserve(names.size());
  for (std::size_t i = 0; i < names.size(); ++i) {
    fused.parts_.push_back(Linear::load(weights, names[i], policy, in_features, out_features.at(i)));
    fused.widths_.push_back(fused.parts_.back().layer().out_features);
  }
  for (const Linear& part : fused.parts_) layers.push_back(&part.layer());
  if (std::optional<quant::QuantizedLinear> stacked = quant::QuantizedLinear::stack_rows(layers)) {
    fused.stacked_.emplace(Linear(std::move(*stacked)));
    fused.parts_.clear();  // the stacked copy replaces them: no second copy of the weights stays
  }
  return fused;
}

std::vector<at::Tensor> FusedLinear::operator()(const at::Tensor& x, const ops::GemmFusion& input) const {
  TORCH_CHECK_VALUE(!input.residual, "FusedLinear: a residual has no one output to go to");
  if (stacked_) return (*stacked_)(x, input).split_with_sizes(widths_, -1);
  const at::Tensor shared = ops::gemm_input(x, input);  // composed once for every part
  std::vector<at::Tensor> outputs;
  outputs.reserve(parts_.size());
  for (const Linear& part : parts_) outputs.push_back(part(shared));
  return outputs;
}

at::Tensor FusedLinear::joined(const at::Tensor& x, const ops::GemmFusion& input) const {
  TORCH_CHECK_VALUE(!input.residual, "FusedLinear: a residual has no one output to go to");
  if (stacked_) return (*stacked_)(x, input);
  return at::cat((*this)(x, input), -1);
}

std::vector<const quant::QuantizedLinear*> FusedLinear::layers() const {
  if (stacked_) return {&stacked_->layer()};
  std::vector<const quant::QuantizedLinear*> layers;
  for (const Linear& part : parts_) layers.push_back(&part.layer());
  return layers;
}

}  // namespace imagetotext::nn
