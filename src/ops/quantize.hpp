// Argument checks shared by the quantization ops (imagetotext::quantize_4bit, dequantize_4bit,
// quantize_blockwise, dequantize_blockwise, int8_vectorwise_quant, int8_vectorwise_dequant, gemm_4bit,
// gemm_int8_weight_only, gemm_dense, int8_scaled_mm) and by their CPU, CUDA and meta kernels. Each throws c10::ValueError (Python: ValueError) naming the op, the
// argument and what was expected.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/ArrayRef.h>

#include <optional>
#include <string_view>
#include <vector>

#include "imagetotext/quant/formats.hpp"
#include "imagetotext/quant/quantize.hpp"

namespace imagetotext::ops::detail {

// Inputs may be non-contiguous (bitsandbytes flattens with reshape/contiguous too): kernels copy them.

// quantize_4bit: A float32/float16/bfloat16; returns the parsed quant type.
quant::QuantType check_quantize_4bit(const at::Tensor& A, int64_t blocksize, std::string_view quant_type);
// dequantize_4bit: packed uint8 with (n+1)/2 bytes and absmax float32 with ceil(n/blocksize) values,
// n = prod(shape), both on one device.
quant::QuantType check_dequantize_4bit(const at::Tensor& packed, const at::Tensor& absmax, int64_t blocksize,
                                       std::string_view quant_type, c10::ArrayRef<int64_t> shape,
                                       at::ScalarType dtype);
// quantize_blockwise: A float32/float16/bfloat16, code float32 [256] on A's device, blocksize > 0.
void check_quantize_blockwise(const at::Tensor& A, const at::Tensor& code, int64_t blocksize);
// dequantize_blockwise: q uint8, absmax float32 with ceil(numel/blocksize) values, code float32 [256].
void check_dequantize_blockwise(const at::Tensor& q, const at::Tensor& absmax, const at::Tensor& code,
                                int64_t blocksize, at::ScalarType dtype);
// int8_vectorwise_quant: A 2-D [rows, cols] float32/float16/bfloat16, threshold >= 0.
void check_int8_vectorwise_quant(const at::Tensor& A, double threshold);
// int8_vectorwise_dequant: CB int8 2-D [rows, cols], SCB float32 [rows] on CB's device.
void check_int8_vectorwise_dequant(const at::Tensor& CB, const at::Tensor& SCB, std::optional<at::ScalarType> dtype);
// int8_scaled_mm: CA int8 [M, K], CB int8 [N, K], SCA float32 [M], SCB float32 [N], bias float [N].
void check_int8_scaled_mm(const at::Tensor& CA, const at::Tensor& CB, const at::Tensor& SCA, const at::Tensor& SCB,
                          const std::optional<at::Tensor>& bias);

// The [N, K] of a quantized weight, as the gemm checks return it.
struct WeightShape {
  int64_t out_features;  // N
  int64_t in_features;   // K
};

// gemm_4bit: A [..., K] float32/float16/bfloat16; weight_shape [N, K]; packed/absmax as dequantize_4bit
// for N*K elements; bias none or A's dtype [N]; everything on A's device.
WeightShape check_gemm_4bit(const at::Tensor& A, const at::Tensor& packed, const at::Tensor& absmax, int64_t blocksize,
                            std::string_view quant_type, c10::ArrayRef<int64_t> weight_shape,
                            const std::optional<at::Tensor>& bias);
// gemm_int8_weight_only: A [..., K] float32/float16/bfloat16; CB int8 [N, K]; SCB float32 [N]; bias none or
// A's dtype [N]; everything on A's device.
WeightShape check_gemm_int8_weight_only(const at::Tensor& A, const at::Tensor& CB, const at::Tensor& SCB,
                                        const std::optional<at::Tensor>& bias);

// gemm_4bit by dequantize_4bit to A's dtype (through the dispatcher) and at::linear: the path for many rows
// of A on either device, where BLAS (cuBLAS' tensor cores) beats a fused kernel.
at::Tensor dequantize_4bit_then_linear(const at::Tensor& A, const at::Tensor& packed, const at::Tensor& absmax,
                                       int64_t blocksize, std::string_view quant_type, WeightShape shape,
                                       const std::optional<at::Tensor>& bias);

// gemm_dense: A [..., K] and weight [N, K] of one float dtype, bias none or [N] of that dtype, one device.
WeightShape check_gemm_dense(const at::Tensor& A, const at::Tensor& weight, const std::optional<at::Tensor>& bias);

// gemm_dense's composition, on the CPU and for more rows than the CUDA GEMV takes: at::matmul, then the bias
// added (so CPU results, which the models' oracle tests hold to transformers, are what they were).
at::Tensor matmul_then_bias(const at::Tensor& A, const at::Tensor& weight, const std::optional<at::Tensor>& bias);

// A gemm's fusion arguments (ops::GemmFusion) checked against A: norm_weight and norm_bias [A.size(-1)],
// residual and normed_out of A's dtype and device, normed_out of A's shape, A's last size even when gated, not
// both norm_weight and gated, norm_bias and normed_out only with norm_weight.
GemmFusion check_gemm_fusion(std::string_view op, const at::Tensor& A, const std::optional<at::Tensor>& norm_weight,
                             double norm_eps, bool gated, const std::optional<at::Tensor>& residual,
                             const std::optional<at::Tensor>& norm_bias, bool gelu,
                             const std::optional<at::Tensor>& normed_out);
// A view with the shape, dtype and device of what the weight multiplies (A, or its first half when gated):
// what the gemm's own checks take.
at::Tensor gemm_input_like(const at::Tensor& A, const GemmFusion& fusion);
// An empty output [..., N] for A (its leading sizes), the fusion's residual, if any, checked to have its shape.
at::Tensor gemm_output(std::string_view op, const at::Tensor& A, int64_t out_features, const GemmFusion& fusion);
// The composed epilogue: gelu of out if asked, then plus the residual if any (checked), each rounded to the
// dtype as ATen's gelu and add round.
at::Tensor finish_gemm(std::string_view op, const at::Tensor& out, const GemmFusion& fusion);
// The fusion's epilogue alone (gelu, residual): what a GEMV fed an already composed input still does.
GemmFusion epilogue_of(const GemmFusion& fusion);

// The output shape of a gemm: A's shape with the last size replaced by N.
std::vector<int64_t> gemm_output_shape(const at::Tensor& A, int64_t out_features);

}  // namespace imagetotext::ops::detail
