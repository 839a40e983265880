// CUDA kernels of imagetotext::quantize_blockwise and imagetotext::dequantize_blockwise (8-bit indices
// into a sorted 256-entry code), bit-identical to the CPU kernels: encode_8bit from formats.hpp over the
// code in shared memory, float32 steps rounded explicitly.
#include <ATen/Dispatch.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "../quantize.hpp"
#include "blockwise.cuh"

namespace imagetotext::ops {
namespace {

__device__ __forceinline__ void load_code(const float* __restrict__ code, float* shared_code) {
  for (int i = threadIdx.x; i < quant::kDynamicMapSize; i += blockDim.x) shared_code[i] = code[i];
  __syncthreads();
}

// One warp per block (any blocksize > 0); lane l encodes elements l, l+32, ... of it.
template <typename scalar_t>
__global__ void quantize_blockwise_kernel(const scalar_t* __restrict__ in, int64_t n, int64_t blocksize,
                                          const float* __restrict__ code, uint8_t* __restrict__ q,
                                          float* __restrict__ absmax) {
  __shared__ float shared_code[quant::kDynamicMapSize];
  load_code(code, shared_code);
  cuda::quantize_blocks_by_warps(in, n, blocksize, absmax, [&](int64_t begin, int64_t end, float scale) {
    for (int64_t i = begin + threadIdx.x % cuda::kWarpSize; i < end; i += cuda::kWarpSize) {
      q[i] = quant::encode_8bit(shared_code, __fmul_rn(static_cast<float>(in[i]), scale));
    }
  });
}

// out[i] = scalar_t(code[q[i]] * absmax[i / blocksize]): one float32 product, one rounding.
template <typename scalar_t>
__global__ void dequantize_blockwise_kernel(const uint8_t* __restrict__ q, const float* __restrict__ absmax,
                                            const float* __restrict__ code, int64_t n, int64_t blocksize,
                                            scalar_t* __restrict__ out) {
  __shared__ float shared_code[quant::kDynamicMapSize];
  load_code(code, shared_code);
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    out[i] = static_cast<scalar_t>(__fmul_rn(shared_code[q[i]], absmax[i / blocksize]));
  }
}

std::tuple<at::Tensor, at::Tensor> quantize_blockwise_cuda(const at::Tensor& A, const at::Tensor& code,
                                                           int64_t blocksize) {
  detail::check_quantize_blockwise(A, code, blocksize);
  const c10::cuda::CUDAGuard guard(A.device());
  const at::Tensor input = A.contiguous(), table = code.contiguous();
  const int64_t n = input.numel();
  at::Tensor q = at::empty(input.sizes(), input.options().dtype(at::kByte));
  at::Tensor absmax = at::empty({quant::block_count(n, blocksize)}, input.options().dtype(at::kFloat));
  if (n == 0) return {q, absmax};
  const int64_t ctas = cuda::cta_count(absmax.numel(), cuda::kWarpsPerCta);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "quantize_blockwise_cuda", [&] {
    quantize_blockwise_kernel<scalar_t><<<ctas, cuda::kThreads, 0, cuda::current_stream()>>>(
        input.data_ptr<scalar_t>(), n, blocksize, table.data_ptr<float>(), q.data_ptr<uint8_t>(),
        absmax.data_ptr<float>());
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {q, absmax};
}

at::Tensor dequantize_blockwise_cuda(const at::Tensor& q, const at::Tensor& absmax, const at::Tensor& code,
                                     int64_t blocksize, at::ScalarType dtype) {
  detail::check_dequantize_blockwise(q, absmax, code, blocksize, dtype);
  const c10::cuda::CUDAGuard guard(q.device());
  const at::Tensor indices = q.contiguous(), scales = absmax.contiguous(), table = code.contiguous();
  at::Tensor out = at::empty(indices.sizes(), indices.options().dtype(dtype));
  const int64_t n = out.numel();
  if (n == 0) return out;
  const int64_t ctas = cuda::cta_count(n, cuda::kThreads);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "dequantize_blockwise_cuda", [&] {
    dequantize_blockwise_kernel<scalar_t><<<ctas, cuda::kThreads, 0, cuda::current_stream()>>>(
        indices.data_ptr<uint8_t>(), scales.data_ptr<float>(), table.data_ptr<float>(), n, blocksize,
        out.data_ptr<scalar_t>());
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

}  // namespace
}  // namespace imagetotext::ops

TORCH_LIBRARY_IMPL(imagetotext, CUDA, m) {
  m.impl("quantize_blockwise", &imagetotext::ops::quantize_blockwise_cuda);
  m.impl("dequantize_blockwise", &imagetotext::ops::dequantize_blockwise_cuda);
}
