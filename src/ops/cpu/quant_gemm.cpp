// CPU kernels of imagetotext::gemm_4bit and imagetotext::gemm_int8_weight_only: dequantize the weight to
// A's dtype, then at::linear. They are the reference the CUDA kernels are tested against (through the
// float32 formula in tests/python/test_quant_gemm.py) and the fallback every device has.
#include <ATen/ops/linear.h>
#include <torch/library.h>

#include "../quantize.hpp"
#include "imagetotext/quant/quantize.hpp"

namespace imagetotext::ops {
namespace {

at::Tensor gemm_4bit_cpu(const at::Tensor& A, const at::Tensor& packed, const at::Tensor& absmax, int64_t blocksize,
                         c10::string_view quant_type, c10::ArrayRef<int64_t> weight_shape,
                         const std::optional<at::Tensor>& bias) {
  const detail::WeightShape shape = detail::check_gemm_4bit(A, packed, absmax, blocksize, quant_type, weight_shape, bias);
  return detail::dequantize_4bit_then_linear(A, packed, absmax, blocksize, quant_type, shape, bias);
}

at::Tensor gemm_int8_weight_only_cpu(const at::Tensor& A, const at::Tensor& CB, const at::Tensor& SCB,
                                     const std::optional<at::Tensor>& bias) {
  detail::check_gemm_int8_weight_only(A, CB, SCB, bias);
  // float32 (CB * SCB) / 127 rounded once to A's dtype: the weight the CUDA large-M path builds directly.
  const at::Tensor weight = ops::int8_vectorwise_dequant(CB, SCB).to(A.scalar_type());
  return at::linear(A, weight, bias);
}

}  // namespace
}  // namespace imagetotext::ops

TORCH_LIBRARY_IMPL(imagetotext, CPU, m) {
  m.impl("gemm_4bit", &imagetotext::ops::gemm_4bit_cpu);
  m.impl("gemm_int8_weight_only", &imagetotext::ops::gemm_int8_weight_only_cpu);
}
