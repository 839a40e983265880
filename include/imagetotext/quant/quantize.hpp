// Weight quantization in the bitsandbytes formats (include/imagetotext/quant/formats.hpp has the formats,
// docs/quantization.md the bytes). Two layers:
//  - imagetotext::ops: the registered torch ops (torch.ops.imagetotext.*), one kernel per device in
//    src/ops/cpu/ and src/ops/cuda/, chosen by the dispatcher;
//  - imagetotext::quant: QuantState and quantize_4bit / dequantize_4bit with double quantization, as
//    bitsandbytes.functional does them.
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "imagetotext/quant/formats.hpp"

namespace imagetotext::ops {

// A (float32/float16/bfloat16, any shape, flattened row-major) -> (packed uint8 [(n+1)/2, 1], absmax
// float32 [ceil(n/blocksize)]). quant_type "nf4" or "fp4"; blocksize a power of two in 32..4096.
std::tuple<at::Tensor, at::Tensor> quantize_4bit(const at::Tensor& A, int64_t blocksize, const std::string& quant_type);
// The inverse: a tensor of `shape` and `dtype`, element i = dtype(code[nibble i] * absmax[i / blocksize]).
at::Tensor dequantize_4bit(const at::Tensor& packed, const at::Tensor& absmax, int64_t blocksize,
                           const std::string& quant_type, const std::vector<int64_t>& shape, at::ScalarType dtype);
// 8-bit blockwise with a sorted 256-entry float32 code (the dynamic map): (q uint8 of A's shape, absmax
// float32 [ceil(n/blocksize)]).
std::tuple<at::Tensor, at::Tensor> quantize_blockwise(const at::Tensor& A, const at::Tensor& code, int64_t blocksize);
at::Tensor dequantize_blockwise(const at::Tensor& q, const at::Tensor& absmax, const at::Tensor& code,
                                int64_t blocksize, at::ScalarType dtype);
// LLM.int8 row-wise quantization of A [rows, cols]: (CB int8, SCB float32 [rows], outlier_cols int64 or
// none when threshold == 0). Values with |x| >= threshold are outliers: left out of the row absmax and
// quantized to 0; with more than one row, their whole columns are zeroed.
std::tuple<at::Tensor, at::Tensor, std::optional<at::Tensor>> int8_vectorwise_quant(const at::Tensor& A,
                                                                                   double threshold);
// CB * SCB[row] * (1/127) in float32, rounded once to dtype when one is given.
at::Tensor int8_vectorwise_dequant(const at::Tensor& CB, const at::Tensor& SCB,
                                   std::optional<at::ScalarType> dtype = std::nullopt);
// LLM.int8's int8 part: float16 [M, N] = half(fmaf(float(CA @ CB^T) * SCA[m] * SCB[n], 1/127^2, bias[n])).
at::Tensor int8_scaled_mm(const at::Tensor& CA, const at::Tensor& CB, const at::Tensor& SCA, const at::Tensor& SCB,
                          const std::optional<at::Tensor>& bias);

// What a gemm does around its matmul, for a decoder layer's norm, gated activation and residual step: fused
// into the GEMV's kernel on CUDA (the decode step: no kernel of their own between two GEMVs), and composed
// from rms_norm / layer_norm, silu_mul, gelu and an add everywhere else, rounded alike.
//   norm_weight: the weight multiplies rms_norm(A, norm_weight, norm_eps) (norm_weight [K], A's dtype);
//   norm_bias:   with norm_weight, layer_norm(A, [K], norm_weight, norm_bias, norm_eps) instead (post-norm models);
//   normed_out:  with norm_weight, receives the normed A (A's shape, dtype and device): a post-norm layer's
//                residual, written by the same kernel;
//   gated:       A is [..., 2K] and the weight multiplies silu_mul(A[..., :K], A[..., K:]);
//   gelu:        the output is gelu(input @ W^T + bias) (erf form), each rounded to the dtype;
//   residual:    the result is residual + that output, rounded again (residual [..., N]).
// At most one of norm_weight and gated.
struct GemmFusion {
  std::optional<at::Tensor> norm_weight = std::nullopt;
  double norm_eps = 1e-6;
  bool gated = false;
  std::optional<at::Tensor> residual = std::nullopt;
  std::optional<at::Tensor> norm_bias = std::nullopt;
  bool gelu = false;
  std::optional<at::Tensor> normed_out = std::nullopt;
};

// What the weight multiplies: A, rms_norm(A), layer_norm(A) or silu_mul of A's halves (the composition), copied
// into the fusion's normed_out when it has one.
at::Tensor gemm_input(const at::Tensor& A, const GemmFusion& fusion);

// A [..., K] (float32/float16/bfloat16) times the transposed 4-bit weight [N, K] packed as quantize_4bit
// packs it (absmax float32, already de-nested), plus bias [N]: [..., N] in A's dtype. Few rows of A run
// fused kernels that never write W out dense (CPU: up to 16 rows, SIMD; CUDA: a tensor-core GEMV up to 64
// rows of float16/bfloat16); more rows dequantize + BLAS (docs/quantization.md).
at::Tensor gemm_4bit(const at::Tensor& A, const at::Tensor& packed, const at::Tensor& absmax, int64_t blocksize,
                     const std::string& quant_type, const std::vector<int64_t>& weight_shape,
                     const std::optional<at::Tensor>& bias = std::nullopt, const GemmFusion& fusion = {});
// A [..., K] times the transposed INT8 weight W = CB * SCB[row] / 127 ([N, K]), plus bias: [..., N] in A's dtype.
at::Tensor gemm_int8_weight_only(const at::Tensor& A, const at::Tensor& CB, const at::Tensor& SCB,
                                 const std::optional<at::Tensor>& bias = std::nullopt, const GemmFusion& fusion = {});
// A [..., K] times the transposed dense weight [N, K] (A's dtype), plus bias: the dense layers' matmul. CUDA, one
// row: the GEMV of the formats above; otherwise at::matmul, then the bias added (the composition the models'
// CPU oracle tests hold to transformers).
at::Tensor gemm_dense(const at::Tensor& A, const at::Tensor& weight,
                      const std::optional<at::Tensor>& bias = std::nullopt, const GemmFusion& fusion = {});

}  // namespace imagetotext::ops

namespace imagetotext::quant {

// bitsandbytes' create_dynamic_map(signed=True): the 256-entry float32 code of double quantization, as
// x86 torch (AVX2/AVX-512 linspace) computes it, so nested absmax bytes match a stock bitsandbytes.
at::Tensor dynamic_map();

// The code table of a 4-bit type as a float32 [16] tensor (bitsandbytes' QuantState.code / quant_map).
at::Tensor code_4bit(QuantType type);
QuantType parse_quant_type(const std::string& name);  // "nf4" or "fp4"; c10::ValueError otherwise
const char* quant_type_name(QuantType type);

// Statistics of double quantization: the 4-bit absmax vector minus `offset`, 8-bit quantized with `code`
// (the dynamic map) in blocks of `blocksize` (256) with float32 `absmax` per block.
struct NestedQuantState {
  at::Tensor absmax;  // float32 [ceil(nblocks / 256)]
  at::Tensor code;    // float32 [256]
  int64_t blocksize = kNestedBlocksize;
  at::Tensor offset;  // float32 0-dim: mean of the 4-bit absmax
};

// Everything dequantize_4bit needs besides the packed bytes (bitsandbytes.functional.QuantState).
struct QuantState {
  at::Tensor absmax;  // float32 [nblocks], or uint8 [nblocks] when `nested` holds the statistics
  at::Tensor code;    // float32 [16]: the table of quant_type
  int64_t blocksize = kDefaultBlocksize4bit;
  QuantType quant_type = QuantType::nf4;
  at::ScalarType dtype = at::kFloat;  // of the original weight and of the dequantized result
  std::vector<int64_t> shape;         // of the original weight
  std::optional<NestedQuantState> nested;

  // The float32 absmax per block: the stored one, or the nested one dequantized plus offset.
  at::Tensor float_absmax() const;
};

// bitsandbytes.functional.quantize_4bit: with compress_statistics, offset = absmax.mean() and the absmax
// is stored as quantize_blockwise(absmax - offset, dynamic_map(), 256).
std::pair<at::Tensor, QuantState> quantize_4bit(const at::Tensor& weight, int64_t blocksize = kDefaultBlocksize4bit,
                                                QuantType quant_type = QuantType::nf4,
                                                bool compress_statistics = true);
at::Tensor dequantize_4bit(const at::Tensor& packed, const QuantState& state);
// ops::gemm_4bit with the weight's state: the nested absmax is dequantized first.
at::Tensor gemm_4bit(const at::Tensor& A, const at::Tensor& packed, const QuantState& state,
                     const std::optional<at::Tensor>& bias = std::nullopt);

// bitsandbytes' LLM.int8 forward (MatMul8bitLt with has_fp16_weights=False, reference section 4.3) of
// A [..., K] (float32/float16/bfloat16) with the int8 weight CB [N, K], SCB [N]: A is cast to float16 and
// quantized per row with `threshold`; the int8 part is int8_scaled_mm (float16, then A's dtype); the
// outlier columns (|a| >= threshold) are added as A[:, cols] @ (CB[:, cols] * SCB / 127)^T in A's dtype.
at::Tensor llm_int8_matmul(const at::Tensor& A, const at::Tensor& CB, const at::Tensor& SCB,
                           const std::optional<at::Tensor>& bias, double threshold = kDefaultOutlierThreshold);

}  // namespace imagetotext::quant
