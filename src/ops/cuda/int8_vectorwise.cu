// CUDA kernels of imagetotext::int8_vectorwise_quant and imagetotext::int8_vectorwise_dequant (LLM.int8
// row-wise absmax), bit-identical to the CPU kernels: 127 * (1 / rowmax) as two rounded float32 steps,
// round-half-even to int8, outliers (|x| >= threshold in the input dtype) left out and zeroed.
#include <ATen/Dispatch.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/index_fill.h>
#include <ATen/ops/nonzero.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "../quantize.hpp"
#include "blockwise.cuh"
#include "int8_vectorwise.hpp"

namespace imagetotext::ops {
namespace {

// One CTA per row: the row max over non-outliers, then CB; outlier_flags[c] = 1 for each column holding an
// outlier (concurrent writes of the same 1 are benign).
template <typename scalar_t>
__global__ void int8_vectorwise_quant_kernel(const scalar_t* __restrict__ in, int64_t rows, int64_t cols,
                                             bool with_outliers, float limit, int8_t* __restrict__ cb,
                                             float* __restrict__ scb, int* __restrict__ outlier_flags) {
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    const scalar_t* row = in + r * cols;
    float rowmax = 0.0f;
    for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) {
      const float magnitude = fabsf(static_cast<float>(row[c]));
      if (!(with_outliers && magnitude >= limit)) rowmax = fmaxf(rowmax, magnitude);
    }
    rowmax = cuda::cta_max(rowmax);
    if (threadIdx.x == 0) scb[r] = rowmax;
    const float scale = __fmul_rn(quant::kInt8Range, __frcp_rn(rowmax));
    for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) {
      const float x = static_cast<float>(row[c]);
      int8_t code = 0;
      if (with_outliers && fabsf(x) >= limit) {
        outlier_flags[c] = 1;
      } else {
        const float v = __fmul_rn(x, scale);
        code = isnan(v) ? 0 : static_cast<int8_t>(__float2int_rn(v));  // round half to even, as nearbyint
      }
      cb[r * cols + c] = code;
    }
  }
}

constexpr int64_t kCodesPerChunk = 16;  // one 16-byte load of int8

// out[i] = out_t((CB[i] * SCB[row]) * (1/127)). A thread takes 16 codes of one row (cols % 16 == 0 and
// 16-byte aligned CB: one load) or, otherwise, 16 consecutive codes one by one.
template <typename out_t>
__global__ void int8_dequantize_rows_kernel(const int8_t* __restrict__ cb, const float* __restrict__ scb,
                                            int64_t numel, int64_t cols, bool vectorized, out_t* __restrict__ out) {
  const int64_t chunks = (numel + kCodesPerChunk - 1) / kCodesPerChunk;
  for (int64_t chunk = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; chunk < chunks;
       chunk += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t begin = chunk * kCodesPerChunk;
    if (vectorized) {
      const uint4 raw = __ldg(reinterpret_cast<const uint4*>(cb + begin));
      const int8_t* codes = reinterpret_cast<const int8_t*>(&raw);
      const float row_scale = scb[begin / cols];
      alignas(16) out_t values[kCodesPerChunk];
#pragma unroll
      for (int j = 0; j < kCodesPerChunk; ++j) {
        values[j] = static_cast<out_t>(
            __fmul_rn(__fmul_rn(static_cast<float>(codes[j]), row_scale), quant::kInt8DequantScale));
      }
      uint4* dst = reinterpret_cast<uint4*>(out + begin);
#pragma unroll
      for (int j = 0; j < kCodesPerChunk / cuda::kPerChunk<out_t>; ++j) dst[j] = reinterpret_cast<uint4*>(values)[j];
    } else {
      for (int64_t i = begin; i < min(begin + kCodesPerChunk, numel); ++i) {
        out[i] = static_cast<out_t>(
            __fmul_rn(__fmul_rn(static_cast<float>(cb[i]), scb[i / cols]), quant::kInt8DequantScale));
      }
    }
  }
}

std::tuple<at::Tensor, at::Tensor, std::optional<at::Tensor>> int8_vectorwise_quant_cuda(const at::Tensor& A,
                                                                                        double threshold) {
  detail::check_int8_vectorwise_quant(A, threshold);
  const c10::cuda::CUDAGuard guard(A.device());
  const at::Tensor input = A.contiguous();
  const int64_t rows = input.size(0), cols = input.size(1);
  at::Tensor cb = at::empty(input.sizes(), input.options().dtype(at::kChar));
  at::Tensor scb = at::empty({rows}, input.options().dtype(at::kFloat));
  at::Tensor outlier_flags = at::zeros({cols}, input.options().dtype(at::kInt));
  const bool with_outliers = threshold > 0.0;
  if (rows > 0) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "int8_vectorwise_quant_cuda", [&] {
      // The threshold rounded to the input dtype, as the CPU kernel (and bitsandbytes) compares it.
      const float limit = static_cast<float>(static_cast<scalar_t>(threshold));
      int8_vectorwise_quant_kernel<scalar_t><<<std::min(rows, cuda::kMaxCtas), cuda::kThreads, 0,
                                               cuda::current_stream()>>>(
          input.data_ptr<scalar_t>(), rows, cols, with_outliers, limit, cb.data_ptr<int8_t>(), scb.data_ptr<float>(),
          outlier_flags.data_ptr<int>());
    });
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  if (!with_outliers) return {cb, scb, std::nullopt};
  const at::Tensor outlier_cols = at::nonzero(outlier_flags).view({-1});  // int64, ascending (synchronizes)
  // With one row the outlier positions are already 0 and the rest of their columns is kept.
  if (rows > 1 && outlier_cols.numel() > 0) cb.index_fill_(1, outlier_cols, 0);
  return {cb, scb, outlier_cols};
}

at::Tensor int8_vectorwise_dequant_cuda(const at::Tensor& CB, const at::Tensor& SCB,
                                        std::optional<at::ScalarType> dtype) {
  detail::check_int8_vectorwise_dequant(CB, SCB, dtype);
  return cuda::int8_dequantize_rows(CB, SCB, dtype.value_or(at::kFloat));
}

}  // namespace

at::Tensor cuda::int8_dequantize_rows(const at::Tensor& CB, const at::Tensor& SCB, at::ScalarType dtype) {
  const c10::cuda::CUDAGuard guard(CB.device());
  const at::Tensor codes = CB.contiguous(), scales = SCB.contiguous();
  at::Tensor out = at::empty(codes.sizes(), codes.options().dtype(dtype));
  const int64_t numel = codes.numel(), cols = codes.size(1);
  if (numel == 0) return out;
  const bool vectorized = cols % kCodesPerChunk == 0 && cuda::is_aligned_16(codes.data_ptr());
  const int64_t ctas = cuda::cta_count((numel + kCodesPerChunk - 1) / kCodesPerChunk, cuda::kThreads);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "int8_dequantize_rows", [&] {
    int8_dequantize_rows_kernel<scalar_t><<<ctas, cuda::kThreads, 0, cuda::current_stream()>>>(
        codes.data_ptr<int8_t>(), scales.data_ptr<float>(), numel, cols, vectorized, out.data_ptr<scalar_t>());
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

}  // namespace imagetotext::ops

TORCH_LIBRARY_IMPL(imagetotext, CUDA, m) {
  m.impl("int8_vectorwise_quant", &imagetotext::ops::int8_vectorwise_quant_cuda);
  m.impl("int8_vectorwise_dequant", &imagetotext::ops::int8_vectorwise_dequant_cuda);
}
