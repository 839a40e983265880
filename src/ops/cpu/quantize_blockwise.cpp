// CPU kernels of imagetotext::quantize_blockwise and imagetotext::dequantize_blockwise (8-bit code).
#include <ATen/Dispatch.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include "../quantize.hpp"
#include "blockwise.hpp"

namespace imagetotext::ops {
namespace {

std::tuple<at::Tensor, at::Tensor> quantize_blockwise_cpu(const at::Tensor& A, const at::Tensor& code,
                                                          int64_t blocksize) {
  detail::check_quantize_blockwise(A, code, blocksize);
  const at::Tensor input = A.contiguous(), table = code.contiguous();
  const int64_t n = input.numel();
  at::Tensor q = at::empty(input.sizes(), input.options().dtype(at::kByte));
  at::Tensor absmax = at::empty({quant::block_count(n, blocksize)}, input.options().dtype(at::kFloat));
  const float* code_values = table.data_ptr<float>();
  uint8_t* out = q.data_ptr<uint8_t>();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "quantize_blockwise_cpu", [&] {
    const scalar_t* in = input.data_ptr<scalar_t>();
    cpu::quantize_blocks(in, n, blocksize, absmax.data_ptr<float>(),
                         [&](int64_t, int64_t begin, int64_t end, float scale) {
                           for (int64_t i = begin; i < end; ++i) {
                             out[i] = quant::encode_8bit(code_values, static_cast<float>(in[i]) * scale);
                           }
                         });
  });
  return {q, absmax};
}

at::Tensor dequantize_blockwise_cpu(const at::Tensor& q, const at::Tensor& absmax, const at::Tensor& code,
                                    int64_t blocksize, at::ScalarType dtype) {
  detail::check_dequantize_blockwise(q, absmax, code, blocksize, dtype);
  const at::Tensor indices = q.contiguous(), scales = absmax.contiguous(), table = code.contiguous();
  at::Tensor out = at::empty(indices.sizes(), indices.options().dtype(dtype));
  const uint8_t* in = indices.data_ptr<uint8_t>();
  const float* code_values = table.data_ptr<float>();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "dequantize_blockwise_cpu", [&] {
    cpu::dequantize_blocks(out.numel(), blocksize, scales.data_ptr<float>(), out.data_ptr<scalar_t>(),
                           [&](int64_t i) { return code_values[in[i]]; });
  });
  return out;
}

}  // namespace
}  // namespace imagetotext::ops

TORCH_LIBRARY_IMPL(imagetotext, CPU, m) {
  m.impl("quantize_blockwise", &imagetotext::ops::quantize_blockwise_cpu);
  m.impl("dequantize_blockwise", &imagetotext::ops::dequantize_blockwise_cpu);
}
