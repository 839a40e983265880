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
#include <vector>

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

  // One layer whose rows are the rows of `parts` in order (their outputs side by side), so layers that read
  // the same input run as one GEMV; forward gives bit for bit what the parts give, for the quantized formats
  // (each output row is computed alone). nullopt where stacking would not be exact or cannot be expressed:
  // formats, in_features, 4-bit blocksize/type/dtype or bias presence that differ, LLM.int8 (its outlier
  // handling runs per call), or a 4-bit part whose weight count is not a whole number of blocks. The result
  // keeps the 4-bit absmax as float32 (not double-quantized): it is for forward, not for saving.
  static std::optional<QuantizedLinear> stack_rows(const std::vector<const QuantizedLinear*>& parts);

  // x [..., in_features] float32/float16/bfloat16 -> [..., out_features] of x's dtype. With a fusion
  // (ops::GemmFusion: x normed or gated first, a residual added after; x [..., 2 * in_features] when gated),
  // the gemm ops fuse it into their one-row GEMV and compose it elsewhere.
  at::Tensor forward(const at::Tensor& x, const ops::GemmFusion& fusion = {}) const;

  // The tensors bitsandbytes' Linear4bit / Linear8bitLt (or nn.Linear for dense) put in a state dict,
  // keyed `<prefix><name>`.
  StateDict state_dict(const std::string& prefix = "") const;

  // The dequantized weight [out_features, in_features], in `dtype` if given, else: 4-bit in the original
  // weight's dtype, INT8 in float32 (CB * SCB / 127, bitsandbytes' int8_vectorwise_dequant), dense as stored.
  at::Tensor dequantized_weight(std::optional<at::ScalarType> dtype = std::nullopt) const;

  Quantization format() const noexcept { return format_; }
  // Whether forward waits for the host (LLM.int8 finds its outlier columns with nonzero), so that it cannot run
  // inside a CUDA graph.
  bool synchronizes() const noexcept { return format_ == Quantization::llm_int8; }
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
