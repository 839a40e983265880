// CUDA kernel of imagetotext::int8_scaled_mm, the core of LLM.int8 on the GPU: int8 x int8 products summed
// exactly in int32, then bitsandbytes' CUDA dequantization kdequant_mm_int32_fp16,
// half(fmaf(float(acc) * SCA[m] * SCB[n], 6.200012e-05f, bias[n])), each step rounded as written
// (__fmul_rn, __fmaf_rn: nvcc may not contract), as the CPU kernel computes it. Integer sums are exact in any
// order, so the result is bit-identical to the CPU kernel's.
//
// Many rows (M > 16, K and N multiples of 8): torch._int_mm (cuBLASLt's int8 GEMM, bitsandbytes' igemmlt)
// into int32, then the scaling kernel. Few rows (decode) or other shapes: one warp per weight row n, its
// bytes read once for up to 8 rows of A at a time, __dp4a on 4-byte words.
#include <ATen/ops/_int_mm.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <cuda_fp16.h>
#include <torch/library.h>

#include "../quantize.hpp"
#include "blockwise.cuh"

namespace imagetotext::ops {
namespace {

constexpr int kRowsPerPass = 8;

__device__ __forceinline__ __half scaled_half(int32_t acc, float sca, float scb, float bias) {
  const float scaled = __fmul_rn(__fmul_rn(static_cast<float>(acc), sca), scb);
  return __float2half_rn(__fmaf_rn(scaled, quant::kInt8MatmulDequantScale, bias));
}

// out = the formula over int32 products from torch._int_mm.
__global__ void scale_int32_kernel(const int32_t* __restrict__ acc, const float* __restrict__ sca,
                                   const float* __restrict__ scb, const float* __restrict__ bias, int64_t M, int64_t N,
                                   __half* __restrict__ out) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < M * N;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t m = i / N, n = i % N;
    out[i] = scaled_half(acc[i], sca[m], scb[n], bias != nullptr ? bias[n] : 0.0f);
  }
}

// One warp per row n of CB; lane l sums words l, l+32, ... (4 int8 each) of row n against up to
// kRowsPerPass rows of CA. `words` is true when K % 4 == 0 and both pointers are 4-byte aligned.
__global__ void int8_rows_kernel(const int8_t* __restrict__ ca, const int8_t* __restrict__ cb,
                                 const float* __restrict__ sca, const float* __restrict__ scb,
                                 const float* __restrict__ bias, int64_t M, int64_t N, int64_t K, bool words,
                                 __half* __restrict__ out) {
  const int lane = threadIdx.x % cuda::kWarpSize;
  const int64_t n = blockIdx.x * static_cast<int64_t>(blockDim.x / cuda::kWarpSize) + threadIdx.x / cuda::kWarpSize;
  if (n >= N) return;
  const int8_t* b_row = cb + n * K;
  for (int64_t m0 = 0; m0 < M; m0 += kRowsPerPass) {
    const int rows = M - m0 < kRowsPerPass ? static_cast<int>(M - m0) : kRowsPerPass;
    int32_t acc[kRowsPerPass] = {};
    if (words) {
      const int* b_words = reinterpret_cast<const int*>(b_row);
      for (int64_t w = lane; w < K / 4; w += cuda::kWarpSize) {
        const int b = __ldg(b_words + w);
#pragma unroll
        for (int r = 0; r < kRowsPerPass; ++r) {
          if (r < rows) acc[r] = __dp4a(__ldg(reinterpret_cast<const int*>(ca + (m0 + r) * K) + w), b, acc[r]);
        }
      }
    } else {
      for (int64_t k = lane; k < K; k += cuda::kWarpSize) {
        const int32_t b = b_row[k];
#pragma unroll
        for (int r = 0; r < kRowsPerPass; ++r) {
          if (r < rows) acc[r] += static_cast<int32_t>(ca[(m0 + r) * K + k]) * b;
        }
      }
    }
#pragma unroll
    for (int r = 0; r < kRowsPerPass; ++r) {
      if (r < rows) {  // uniform across the warp
        int32_t sum = acc[r];
        for (int offset = cuda::kWarpSize / 2; offset > 0; offset >>= 1) {
          sum += __shfl_xor_sync(cuda::kFullMask, sum, offset);
        }
        if (lane == 0) {
          out[(m0 + r) * N + n] = scaled_half(sum, sca[m0 + r], scb[n], bias != nullptr ? bias[n] : 0.0f);
        }
      }
    }
  }
}

bool int_mm_applies(int64_t M, int64_t N, int64_t K) { return M > 16 && K % 8 == 0 && N % 8 == 0 && K > 0; }

at::Tensor int8_scaled_mm_cuda(const at::Tensor& CA, const at::Tensor& CB, const at::Tensor& SCA, const at::Tensor& SCB,
                               const std::optional<at::Tensor>& bias) {
  detail::check_int8_scaled_mm(CA, CB, SCA, SCB, bias);
  const c10::cuda::CUDAGuard guard(CA.device());
  const at::Tensor a = CA.contiguous(), b = CB.contiguous(), sca = SCA.contiguous(), scb = SCB.contiguous();
  const int64_t M = a.size(0), N = b.size(0), K = a.size(1);
  const at::Tensor bias_f32 = bias ? bias->to(at::kFloat).contiguous() : at::Tensor();
  const float* bias_ptr = bias ? bias_f32.data_ptr<float>() : nullptr;
  at::Tensor out = at::empty({M, N}, a.options().dtype(at::kHalf));
  if (M == 0 || N == 0) return out;
  __half* dst = reinterpret_cast<__half*>(out.data_ptr<at::Half>());
  at::Tensor acc;
  if (int_mm_applies(M, N, K)) {
    try {
      acc = at::_int_mm(a, b.t());
    } catch (const c10::Error&) {
      // A torch build whose _int_mm refuses this layout: the warp kernel below gives the same integers.
    }
  }
  if (acc.defined()) {
    scale_int32_kernel<<<cuda::cta_count(M * N, cuda::kThreads), cuda::kThreads, 0, cuda::current_stream()>>>(
        acc.data_ptr<int32_t>(), sca.data_ptr<float>(), scb.data_ptr<float>(), bias_ptr, M, N, dst);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    return out;
  }
  const bool words = K % 4 == 0 && reinterpret_cast<uintptr_t>(a.data_ptr()) % 4 == 0 &&
                     reinterpret_cast<uintptr_t>(b.data_ptr()) % 4 == 0;
  const int64_t ctas = (N + cuda::kWarpsPerCta - 1) / cuda::kWarpsPerCta;
  int8_rows_kernel<<<ctas, cuda::kThreads, 0, cuda::current_stream()>>>(
      a.data_ptr<int8_t>(), b.data_ptr<int8_t>(), sca.data_ptr<float>(), scb.data_ptr<float>(), bias_ptr, M, N, K,
      words, dst);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

}  // namespace
}  // namespace imagetotext::ops

TORCH_LIBRARY_IMPL(imagetotext, CUDA, m) { m.impl("int8_scaled_mm", &imagetotext::ops::int8_scaled_mm_cuda); }
