// CPU kernels of imagetotext::quantize_4bit and imagetotext::dequantize_4bit (NF4 / FP4).
#include <ATen/Dispatch.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <array>

#include "../quantize.hpp"
#include "blockwise.hpp"

namespace imagetotext::ops {
namespace {

using quant::QuantType;

template <typename scalar_t>
void quantize_4bit_blocks(const scalar_t* in, int64_t n, int64_t blocksize, QuantType type, uint8_t* packed,
                          float* absmax) {
  // blocksize is even, so a pair (2j, 2j+1) never straddles two blocks; only the last block can end on
  // an unpaired element, whose partner is a padded 0.0 scaled like the block (NaN for an all-zero block).
  cpu::quantize_blocks(in, n, blocksize, absmax, [&](int64_t, int64_t begin, int64_t end, float scale) {
    auto encode = [&](float x) { return quant::encode_4bit(type, x * scale); };
    int64_t i = begin;
    for (; i + 1 < end; i += 2) {
      packed[i / 2] = quant::pack_4bit(encode(static_cast<float>(in[i])), encode(static_cast<float>(in[i + 1])));
    }
    if (i < end) packed[i / 2] = quant::pack_4bit(encode(static_cast<float>(in[i])), encode(0.0f));
  });
}

std::tuple<at::Tensor, at::Tensor> quantize_4bit_cpu(const at::Tensor& A, int64_t blocksize,
                                                     c10::string_view quant_type) {
  const QuantType type = detail::check_quantize_4bit(A, blocksize, quant_type);
  const at::Tensor input = A.contiguous();
  const int64_t n = input.numel();
  at::Tensor packed = at::empty({quant::packed_4bit_bytes(n), 1}, input.options().dtype(at::kByte));
  at::Tensor absmax = at::empty({quant::block_count(n, blocksize)}, input.options().dtype(at::kFloat));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "quantize_4bit_cpu", [&] {
    quantize_4bit_blocks(input.data_ptr<scalar_t>(), n, blocksize, type, packed.data_ptr<uint8_t>(),
                         absmax.data_ptr<float>());
  });
  return {packed, absmax};
}

at::Tensor dequantize_4bit_cpu(const at::Tensor& packed, const at::Tensor& absmax, int64_t blocksize,
                               c10::string_view quant_type, c10::ArrayRef<int64_t> shape, at::ScalarType dtype) {
  const QuantType type = detail::check_dequantize_4bit(packed, absmax, blocksize, quant_type, shape, dtype);
  const at::Tensor bytes = packed.contiguous(), scales = absmax.contiguous();
  at::Tensor out = at::empty(shape, bytes.options().dtype(dtype));
  std::array<float, 16> table{};
  for (uint8_t code = 0; code < 16; ++code) table[code] = quant::code_value_4bit(type, code);
  const uint8_t* in = bytes.data_ptr<uint8_t>();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "dequantize_4bit_cpu", [&] {
    cpu::dequantize_blocks(out.numel(), blocksize, scales.data_ptr<float>(), out.data_ptr<scalar_t>(), [&](int64_t i) {
      const uint8_t byte = in[i / 2];
      return table[(i & 1) ? quant::low_nibble(byte) : quant::high_nibble(byte)];
    });
  });
  return out;
}

}  // namespace
}  // namespace imagetotext::ops

TORCH_LIBRARY_IMPL(imagetotext, CPU, m) {
  m.impl("quantize_4bit", &imagetotext::ops::quantize_4bit_cpu);
  m.impl("dequantize_4bit", &imagetotext::ops::dequantize_4bit_cpu);
}
