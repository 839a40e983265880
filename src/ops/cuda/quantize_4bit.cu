// CUDA kernels of imagetotext::quantize_4bit and imagetotext::dequantize_4bit (NF4 / FP4), bit-identical
// to the CPU kernels: the same rules from formats.hpp, each float32 step rounded explicitly
// (__frcp_rn, __fmul_rn) so nvcc cannot contract or approximate it.
#include <ATen/Dispatch.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "../quantize.hpp"
#include "blockwise.cuh"

namespace imagetotext::ops {
namespace {

using quant::QuantType;

// One warp per quantization block; lane l packs bytes l, l+32, ... of the block. blocksize is even, so a
// pair never straddles blocks; the unpaired last element of an odd n is paired with a padded 0.0 scaled
// like its block (NaN for an all-zero block), as the CPU kernel does.
template <typename scalar_t>
__global__ void quantize_4bit_kernel(const scalar_t* __restrict__ in, int64_t n, int64_t blocksize, QuantType type,
                                     uint8_t* __restrict__ packed, float* __restrict__ absmax) {
  cuda::quantize_blocks_by_warps(in, n, blocksize, absmax, [&](int64_t begin, int64_t end, float scale) {
    for (int64_t byte = begin / 2 + threadIdx.x % cuda::kWarpSize; byte < (end + 1) / 2; byte += cuda::kWarpSize) {
      const int64_t i = 2 * byte;
      const float even = __fmul_rn(static_cast<float>(in[i]), scale);
      const float odd = __fmul_rn(i + 1 < end ? static_cast<float>(in[i + 1]) : 0.0f, scale);
      packed[byte] = quant::pack_4bit(quant::encode_4bit(type, even), quant::encode_4bit(type, odd));
    }
  });
}

// 32 elements (16 packed bytes) per thread: blocksize >= 32 is a power of two, so they share one absmax.
constexpr int64_t kElementsPerGroup = 32;

// out[i] = scalar_t(table[code_i] * absmax[i / blocksize]): one float32 product, one rounding. Full groups
// use one 16-byte load and 16-byte stores when the packed bytes are 16-byte aligned; the rest goes byte by byte.
template <typename scalar_t>
__global__ void dequantize_4bit_kernel(const uint8_t* __restrict__ packed, const float* __restrict__ absmax,
                                       int64_t n, int log2_blocksize, cuda::CodeTable4bit codes, bool aligned,
                                       scalar_t* __restrict__ out) {
  __shared__ float table[16];
  if (threadIdx.x < 16) table[threadIdx.x] = codes.values[threadIdx.x];
  __syncthreads();
  const int64_t groups = (n + kElementsPerGroup - 1) / kElementsPerGroup;
  for (int64_t g = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; g < groups;
       g += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t begin = g * kElementsPerGroup;
    const float scale = absmax[begin >> log2_blocksize];
    if (aligned && begin + kElementsPerGroup <= n) {
      const uint4 raw = *reinterpret_cast<const uint4*>(packed + begin / 2);
      const uint8_t* bytes = reinterpret_cast<const uint8_t*>(&raw);
      alignas(16) scalar_t values[kElementsPerGroup];
#pragma unroll
      for (int j = 0; j < 16; ++j) {
        values[2 * j] = static_cast<scalar_t>(__fmul_rn(table[quant::high_nibble(bytes[j])], scale));
        values[2 * j + 1] = static_cast<scalar_t>(__fmul_rn(table[quant::low_nibble(bytes[j])], scale));
      }
      uint4* dst = reinterpret_cast<uint4*>(out + begin);
#pragma unroll
      for (int j = 0; j < kElementsPerGroup / cuda::kPerChunk<scalar_t>; ++j) dst[j] = reinterpret_cast<uint4*>(values)[j];
    } else {
      for (int64_t i = begin; i < min(begin + kElementsPerGroup, n); ++i) {
        const uint8_t byte = packed[i / 2];
        const uint8_t code = (i & 1) ? quant::low_nibble(byte) : quant::high_nibble(byte);
        out[i] = static_cast<scalar_t>(__fmul_rn(table[code], scale));
      }
    }
  }
}

std::tuple<at::Tensor, at::Tensor> quantize_4bit_cuda(const at::Tensor& A, int64_t blocksize,
                                                      c10::string_view quant_type) {
  const QuantType type = detail::check_quantize_4bit(A, blocksize, quant_type);
  const c10::cuda::CUDAGuard guard(A.device());
  const at::Tensor input = A.contiguous();
  const int64_t n = input.numel();
  at::Tensor packed = at::empty({quant::packed_4bit_bytes(n), 1}, input.options().dtype(at::kByte));
  at::Tensor absmax = at::empty({quant::block_count(n, blocksize)}, input.options().dtype(at::kFloat));
  if (n == 0) return {packed, absmax};
  const int64_t ctas = cuda::cta_count(absmax.numel(), cuda::kWarpsPerCta);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "quantize_4bit_cuda", [&] {
    quantize_4bit_kernel<scalar_t><<<ctas, cuda::kThreads, 0, cuda::current_stream()>>>(
        input.data_ptr<scalar_t>(), n, blocksize, type, packed.data_ptr<uint8_t>(), absmax.data_ptr<float>());
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {packed, absmax};
}

at::Tensor dequantize_4bit_cuda(const at::Tensor& packed, const at::Tensor& absmax, int64_t blocksize,
                                c10::string_view quant_type, c10::ArrayRef<int64_t> shape, at::ScalarType dtype) {
  const QuantType type = detail::check_dequantize_4bit(packed, absmax, blocksize, quant_type, shape, dtype);
  const c10::cuda::CUDAGuard guard(packed.device());
  const at::Tensor bytes = packed.contiguous(), scales = absmax.contiguous();
  at::Tensor out = at::empty(shape, bytes.options().dtype(dtype));
  const int64_t n = out.numel();
  if (n == 0) return out;
  const int64_t ctas = cuda::cta_count((n + kElementsPerGroup - 1) / kElementsPerGroup, cuda::kThreads);
  const bool aligned = cuda::is_aligned_16(bytes.data_ptr());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "dequantize_4bit_cuda", [&] {
    dequantize_4bit_kernel<scalar_t><<<ctas, cuda::kThreads, 0, cuda::current_stream()>>>(
        bytes.data_ptr<uint8_t>(), scales.data_ptr<float>(), n, cuda::log2_of(blocksize), cuda::code_table_4bit(type),
        aligned, out.data_ptr<scalar_t>());
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

}  // namespace
}  // namespace imagetotext::ops

TORCH_LIBRARY_IMPL(imagetotext, CUDA, m) {
  m.impl("quantize_4bit", &imagetotext::ops::quantize_4bit_cuda);
  m.impl("dequantize_4bit", &imagetotext::ops::dequantize_4bit_cuda);
}
