// QuantizedLinear: the linear layer every model builds its projections from, y = x @ W^T + bias with W
// stored dense, INT8 (weight-only or LLM.int8) or 4-bit (NF4/FP4), in bitsandbytes' formats, and its
// state dict in the layout bitsandbytes writes (docs/quantization.md, "Checkpoint layout"), so
// pre-quantized hub checkpoints load and ours load in bitsandbytes / transformers.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstddef>
#include <cstdint>
#include <map>
#include <optional>
#include <string>

#include "imagetotext/models/registry.hpp"
#include "imagetotext/quant/quantize.hpp"

namespace imagetotext::quant {

// How from_dense quantizes; the defaults are bitsandbytes' Linear4bit / Linear8bitLt ones.
struct QuantizeOptions {
  int64_t blocksize = kDefaultBlocksize4bit;    // 4-bit formats
  bool compress_statistics = true;              // 4-bit: double-quantize the absmax
  double threshold = kDefaultOutlierThreshold;  // llm_int8: outlier threshold (0 disables outliers)
};

using StateDict = std::map<std::string, at::Tensor>;

class QuantizedLinear {
 public:
  // weight [out_features, in_features] float32/float16/bfloat16; bias [out_features] or none. INT8 formats
  // quantize the float16 weight, as bitsandbytes' Int8Params does. Throws c10::ValueError on bad input.
  static QuantizedLinear from_dense(const at::Tensor& weight, std::optional<at::Tensor> bias, Quantization format,
                                    QuantizeOptions options = {});

  // Reads `<prefix>weight` and the keys its format needs (prefix as torch writes it, e.g. "layers.0.fc1.",
  // or ""). `threshold` is LLM.int8's (not stored in checkpoints). Throws CheckpointError naming the key
  // that is missing or malformed.
  static QuantizedLinear from_state_dict(const StateDict& state, const std::string& prefix, Quantization format,
                                         double threshold = kDefaultOutlierThreshold);

  // x [..., in_features] float32/float16/bfloat16 -> [..., out_features] of x's dtype.
  at::Tensor forward(const at::Tensor& x) const;

  // The tensors bitsandbytes' Linear4bit / Linear8bitLt (or nn.Linear for dense) put in a state dict,
  // keyed `<prefix><name>`.
  StateDict state_dict(const std::string& prefix = "") const;

  // The dequantized weight [out_features, in_features]: 4-bit in the original weight's dtype, INT8 in
  // float32 (CB * SCB / 127, bitsandbytes' int8_vectorwise_dequant), dense as stored.
  at::Tensor dequantized_weight() const;

  Quantization format() const noexcept { return format_; }
  const std::optional<at::Tensor>& bias() const noexcept { return bias_; }
  // Bytes the weight occupies as stored (packed codes and statistics; not the bias or forward caches).
  size_t weight_bytes() const;
  // What weight_bytes() is for a layer of `format` and shape without building one (dense: in `dense_dtype`).
  static size_t weight_bytes_for(Quantization format, int64_t out_features, int64_t in_features,
                             at::ScalarType dense_dtype, const QuantizeOptions& options = {});

  int64_t in_features = 0;
  int64_t out_features = 0;

 private:
  QuantizedLinear() = default;
  void prepare_forward();  // fills the caches forward reads

  Quantization format_ = Quantization::none;
  at::Tensor weight_;  // dense: the weight; int8 formats: CB int8 [out, in]; 4-bit: packed uint8 [n/2, 1]
  std::optional<at::Tensor> bias_;
  at::Tensor scb_;     // int8 formats: float32 [out]
  QuantState state_;   // 4-bit formats
  at::Tensor float_absmax_;  // 4-bit: float32 absmax per block, restored once from the nested statistics
  double threshold_ = kDefaultOutlierThreshold;
};

}  // namespace imagetotext::quant
