// Meta kernels of the quantization ops: the same argument checks and the output shapes, no data. They let
// shape inference (meta/fake tensors) run, and make arguments split between devices fail with the checks'
// ValueError (the dispatcher routes a meta + CPU mix here). int8_vectorwise_quant has none: its outlier
// column count depends on the data.
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include "../quantize.hpp"

namespace imagetotext::ops {
namespace {

std::tuple<at::Tensor, at::Tensor> quantize_4bit_meta(const at::Tensor& A, int64_t blocksize,
                                                      c10::string_view quant_type) {
  detail::check_quantize_4bit(A, blocksize, quant_type);
  return {at::empty({quant::packed_4bit_bytes(A.numel()), 1}, A.options().dtype(at::kByte)),
          at::empty({quant::block_count(A.numel(), blocksize)}, A.options().dtype(at::kFloat))};
}

at::Tensor dequantize_4bit_meta(const at::Tensor& packed, const at::Tensor& absmax, int64_t blocksize,
                                c10::string_view quant_type, c10::ArrayRef<int64_t> shape, at::ScalarType dtype) {
  detail::check_dequantize_4bit(packed, absmax, blocksize, quant_type, shape, dtype);
  return at::empty(shape, packed.options().dtype(dtype));
}

std::tuple<at::Tensor, at::Tensor> quantize_blockwise_meta(const at::Tensor& A, const at::Tensor& code,
                                                           int64_t blocksize) {
  detail::check_quantize_blockwise(A, code, blocksize);
  return {at::empty(A.sizes(), A.options().dtype(at::kByte)),
          at::empty({quant::block_count(A.numel(), blocksize)}, A.options().dtype(at::kFloat))};
}

at::Tensor dequantize_blockwise_meta(const at::Tensor& q, const at::Tensor& absmax, const at::Tensor& code,
                                     int64_t blocksize, at::ScalarType dtype) {
  detail::check_dequantize_blockwise(q, absmax, code, blocksize, dtype);
  return at::empty(q.sizes(), q.options().dtype(dtype));
}

at::Tensor int8_vectorwise_dequant_meta(const at::Tensor& CB, const at::Tensor& SCB,
                                        std::optional<at::ScalarType> dtype) {
  detail::check_int8_vectorwise_dequant(CB, SCB, dtype);
  return at::empty(CB.sizes(), CB.options().dtype(dtype.value_or(at::kFloat)));
}

at::Tensor gemm_4bit_meta(const at::Tensor& A, const at::Tensor& packed, const at::Tensor& absmax, int64_t blocksize,
                          c10::string_view quant_type, c10::ArrayRef<int64_t> weight_shape,
                          const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& norm_weight,
                          double norm_eps, bool gated, const std::optional<at::Tensor>& residual,
                          const std::optional<at::Tensor>& norm_bias, bool gelu,
                          const std::optional<at::Tensor>& normed_out) {
  constexpr std::string_view op = "gemm_4bit";
  const GemmFusion fusion = detail::check_gemm_fusion(op, A, norm_weight, norm_eps, gated, residual, norm_bias, gelu,
                                                      normed_out);
  const auto shape = detail::check_gemm_4bit(detail::gemm_input_like(A, fusion), packed, absmax, blocksize, quant_type,
                                             weight_shape, bias);
  return detail::gemm_output(op, A, shape.out_features, fusion);
}

at::Tensor gemm_int8_weight_only_meta(const at::Tensor& A, const at::Tensor& CB, const at::Tensor& SCB,
                                      const std::optional<at::Tensor>& bias,
                                      const std::optional<at::Tensor>& norm_weight, double norm_eps, bool gated,
                                      const std::optional<at::Tensor>& residual,
                                      const std::optional<at::Tensor>& norm_bias, bool gelu,
                                      const std::optional<at::Tensor>& normed_out) {
  constexpr std::string_view op = "gemm_int8_weight_only";
  const GemmFusion fusion = detail::check_gemm_fusion(op, A, norm_weight, norm_eps, gated, residual, norm_bias, gelu,
                                                      normed_out);
  const auto shape = detail::check_gemm_int8_weight_only(detail::gemm_input_like(A, fusion), CB, SCB, bias);
  return detail::gemm_output(op, A, shape.out_features, fusion);
}

at::Tensor gemm_dense_meta(const at::Tensor& A, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                           const std::optional<at::Tensor>& norm_weight, double norm_eps, bool gated,
                           const std::optional<at::Tensor>& residual,
                           const std::optional<at::Tensor>& norm_bias, bool gelu,
                           const std::optional<at::Tensor>& normed_out) {
  constexpr std::string_view op = "gemm_dense";
  const GemmFusion fusion = detail::check_gemm_fusion(op, A, norm_weight, norm_eps, gated, residual, norm_bias, gelu,
                                                      normed_out);
  const auto shape = detail::check_gemm_dense(detail::gemm_input_like(A, fusion), weight, bias);
  return detail::gemm_output(op, A, shape.out_features, fusion);
}

at::Tensor int8_scaled_mm_meta(const at::Tensor& CA, const at::Tensor& CB, const at::Tensor& SCA,
                               const at::Tensor& SCB, const std::optional<at::Tensor>& bias) {
  detail::check_int8_scaled_mm(CA, CB, SCA, SCB, bias);
  return at::empty({CA.size(0), CB.size(0)}, CA.options().dtype(at::kHalf));
}

}  // namespace
}  // namespace imagetotext::ops

TORCH_LIBRARY_IMPL(imagetotext, Meta, m) {
  m.impl("quantize_4bit", &imagetotext::ops::quantize_4bit_meta);
  m.impl("dequantize_4bit", &imagetotext::ops::dequantize_4bit_meta);
  m.impl("quantize_blockwise", &imagetotext::ops::quantize_blockwise_meta);
  m.impl("dequantize_blockwise", &imagetotext::ops::dequantize_blockwise_meta);
  m.impl("int8_vectorwise_dequant", &imagetotext::ops::int8_vectorwise_dequant_meta);
  m.impl("gemm_4bit", &imagetotext::ops::gemm_4bit_meta);
  m.impl("gemm_int8_weight_only", &imagetotext::ops::gemm_int8_weight_only_meta);
  m.impl("gemm_dense", &imagetotext::ops::gemm_dense_meta);
  m.impl("int8_scaled_mm", &imagetotext::ops::int8_scaled_mm_meta);
}
