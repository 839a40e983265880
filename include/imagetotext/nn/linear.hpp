// Linear layers as every model builds them: one LinearPolicy (the quantization a model variant asks for,
// and the modules it keeps dense) decides, per layer, whether a checkpoint's dense weight becomes a
// QuantizedLinear of that format. A layer stored pre-quantized (bitsandbytes' layout) loads as stored.
#pragma once

#include <ATen/core/Tensor.h>

#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "imagetotext/models/registry.hpp"
#include "imagetotext/nn/weights.hpp"
#include "imagetotext/quant/quantized_linear.hpp"

namespace imagetotext::nn {

struct LinearPolicy {
  Quantization format = Quantization::none;
  quant::QuantizeOptions options;
  // Modules kept dense, as transformers' `llm_int8_skip_modules`: an entry matches a layer whose full name
  // equals it, ends with "." + it, or starts with it + "." (so "lm_head" and "model.vision_model" both work).
  std::vector<std::string> keep_dense;

  // Called by Linear::load with each layer's full name and the layer as loaded: how tools learn which
  // layers a model builds from a checkpoint (models/checkpoint_tools.hpp) without a second list of them.
  std::function<void(const std::string& module, const quant::QuantizedLinear& layer)> on_load;

  // The format the layer named `module` (its full checkpoint name, without ".weight") gets.
  Quantization format_for(std::string_view module) const;
};

class Linear {
 public:
  // Reads `<name>.weight` (and `<name>.bias` if present) under `weights`. A dense weight is placed on the
  // model's device and dtype, then quantized as `policy` says; a pre-quantized one (int8 weight with
  // `SCB`, or packed 4-bit with its quant_state) loads in its stored format. `in_features`/`out_features`,
  // when positive, are checked. Throws CheckpointError naming the tensor.
  static Linear load(const Weights& weights, std::string_view name, const LinearPolicy& policy,
                     std::int64_t in_features = 0, std::int64_t out_features = 0);

  // x [..., in] -> [..., out]; `fusion` as QuantizedLinear::forward takes it (norm or gate first, residual after).
  at::Tensor operator()(const at::Tensor& x, const ops::GemmFusion& fusion = {}) const {
    return layer_.forward(x, fusion);
  }
  const quant::QuantizedLinear& layer() const noexcept { return layer_; }

 private:
  friend class FusedLinear;
  explicit Linear(quant::QuantizedLinear layer) : layer_(std::move(layer)) {}
  quant::QuantizedLinear layer_;
};

// Linear layers that read the same input (q/k/v, gate/up) run as one: their rows stacked in one layer
// (QuantizedLinear::stack_rows), so a decode step launches one GEMV instead of one per layer, and the output
// is split back into views. Where stacking would not be exact (LLM.int8, formats that differ), the parts
// run one by one. Each part is loaded as Linear::load loads it (policy, pre-quantized layouts, on_load).
class FusedLinear {
 public:
  static FusedLinear load(const Weights& weights, const std::vector<std::string_view>& names,
                          const LinearPolicy& policy, std::int64_t in_features,
                          const std::vector<std::int64_t>& out_features);

  // x [..., in_features] -> one [..., out_features[i]] per part (views of one output when stacked). `input`: an
  // input fusion (norm or gate, no residual), fused into the stacked GEMV or composed once for the parts.
  std::vector<at::Tensor> operator()(const at::Tensor& x, const ops::GemmFusion& input = {}) const;
  // The same outputs side by side, [..., sum of out_features] (the stacked output itself when stacked).
  at::Tensor joined(const at::Tensor& x, const ops::GemmFusion& input = {}) const;

  // The layers that run: the stacked one, or the parts.
  std::vector<const quant::QuantizedLinear*> layers() const;

 private:
  std::vector<Linear> parts_;  // empty when stacked
  std::optional<Linear> stacked_;
  std::vector<std::int64_t> widths_;
};

}  // namespace imagetotext::nn
