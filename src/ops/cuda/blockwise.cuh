// Device helpers shared by the CUDA quantization kernels: warp and block reductions, the grid of
// "one warp per quantization block" kernels, 16-byte loads converted to float, and the 4-bit code table
// as a kernel argument. Light includes on purpose: nvcc parses each .cu once per architecture.
#pragma once

#include <c10/cuda/CUDAStream.h>

#include <algorithm>
#include <cstdint>

#include "imagetotext/quant/formats.hpp"

namespace imagetotext::ops::cuda {

constexpr int kWarpSize = 32;
constexpr unsigned kFullMask = 0xffffffffu;
// CTAs of 8 warps for the elementwise and "one warp per block" kernels.
constexpr int kThreads = 256;
constexpr int kWarpsPerCta = kThreads / kWarpSize;
// Grid-stride loops cover the rest; more CTAs than this only add scheduling work.
constexpr int64_t kMaxCtas = 1 << 16;

inline int64_t cta_count(int64_t work_items, int64_t items_per_cta) {
  return std::clamp<int64_t>((work_items + items_per_cta - 1) / items_per_cta, 1, kMaxCtas);
}

inline cudaStream_t current_stream() { return c10::cuda::getCurrentCUDAStream(); }

// fmaxf drops NaN operands, as the CPU kernels' std::max(amax, |x|) does; max is exact, so any order works.
__device__ __forceinline__ float warp_max(float v) {
  for (int offset = kWarpSize / 2; offset > 0; offset >>= 1) v = fmaxf(v, __shfl_xor_sync(kFullMask, v, offset));
  return v;
}

__device__ __forceinline__ float warp_sum(float v) {
  for (int offset = kWarpSize / 2; offset > 0; offset >>= 1) v += __shfl_xor_sync(kFullMask, v, offset);
  return v;
}

// Max over the CTA (blockDim.x a multiple of 32, at most kThreads), returned to every thread.
__device__ __forceinline__ float cta_max(float v) {
  __shared__ float partial[kWarpsPerCta];
  const int warp = threadIdx.x / kWarpSize, lane = threadIdx.x % kWarpSize;
  v = warp_max(v);
  __syncthreads();  // partial may still be read by a previous call
  if (lane == 0) partial[warp] = v;
  __syncthreads();
  v = lane < static_cast<int>(blockDim.x / kWarpSize) ? partial[lane] : 0.0f;
  return warp_max(v);
}

// max |x| over in[begin, end), one warp, every lane gets it (the absmax of a quantization block).
template <typename scalar_t>
__device__ __forceinline__ float warp_absmax(const scalar_t* __restrict__ in, int64_t begin, int64_t end) {
  float amax = 0.0f;
  for (int64_t i = begin + threadIdx.x % kWarpSize; i < end; i += kWarpSize) {
    amax = fmaxf(amax, fabsf(static_cast<float>(in[i])));
  }
  return warp_max(amax);
}

// The blockwise quantizers: one warp per quantization block b of the n elements, absmax[b] = max |x|,
// then encode_block(begin, end, scale) with scale = 1 / absmax rounded once (__frcp_rn: the CPU's 1.0f / amax,
// +inf for an all-zero block).
template <typename scalar_t, typename EncodeBlock>
__device__ __forceinline__ void quantize_blocks_by_warps(const scalar_t* __restrict__ in, int64_t n, int64_t blocksize,
                                                         float* __restrict__ absmax, EncodeBlock encode_block) {
  const int64_t blocks = quant::block_count(n, blocksize);
  const int64_t warps = static_cast<int64_t>(gridDim.x) * (blockDim.x / kWarpSize);
  for (int64_t b = blockIdx.x * static_cast<int64_t>(blockDim.x / kWarpSize) + threadIdx.x / kWarpSize; b < blocks;
       b += warps) {
    const int64_t begin = b * blocksize, end = min(begin + blocksize, n);
    const float amax = warp_absmax(in, begin, end);
    if (threadIdx.x % kWarpSize == 0) absmax[b] = amax;
    encode_block(begin, end, __frcp_rn(amax));
  }
}

// The 16 values of a 4-bit type, passed by value and copied to shared memory by the kernel.
struct CodeTable4bit {
  float values[16];
};

inline CodeTable4bit code_table_4bit(quant::QuantType type) {
  CodeTable4bit table{};
  for (uint8_t code = 0; code < 16; ++code) table.values[code] = quant::code_value_4bit(type, code);
  return table;
}

// Element i of a 16-byte chunk as float: c10::Half / c10::BFloat16 / float convert exactly.
template <typename scalar_t>
constexpr int kPerChunk = 16 / static_cast<int>(sizeof(scalar_t));

template <typename scalar_t>
__device__ __forceinline__ void load_chunk_as_float(const scalar_t* src, float* dst) {
  const uint4 raw = *reinterpret_cast<const uint4*>(src);  // a plain load: src may be a previous kernel's output
  const scalar_t* values = reinterpret_cast<const scalar_t*>(&raw);
#pragma unroll
  for (int i = 0; i < kPerChunk<scalar_t>; ++i) dst[i] = static_cast<float>(values[i]);
}

// The sum of v over the CTA (every thread gets it; every thread must call it).
__device__ __forceinline__ float block_sum(float v) {
  __shared__ float partial[32];
  const int warp = threadIdx.x / kWarpSize, lane = threadIdx.x % kWarpSize;
  v = warp_sum(v);
  __syncthreads();
  if (lane == 0) partial[warp] = v;
  __syncthreads();
  v = lane < static_cast<int>(blockDim.x / kWarpSize) ? partial[lane] : 0.0f;
  return warp_sum(v);
}

// v rounded to T and back: where ATen's elementwise ops in T round an intermediate.
template <typename T>
__device__ __forceinline__ float rounded(float v) {
  return static_cast<float>(static_cast<T>(v));
}

// One element of an RMSNorm in T: dtype(weight * dtype(x * inverse)), as the models' RMSNorm rounds the normed
// value to the input's dtype before the weight (every GEMV that stages a normed input computes it here).
template <typename T>
__device__ __forceinline__ T rms_normed(float x, float inverse, float weight) {
  return static_cast<T>(weight * rounded<T>(x * inverse));
}

// One element of silu_mul in T: dtype(dtype(silu(gate)) * up), as ATen's silu then mul round.
template <typename T>
__device__ __forceinline__ T silu_times(float gate, float up) {
  return static_cast<T>(rounded<T>(gate / (1.0f + expf(-gate))) * up);
}

// gelu of v rounded to T, as ATen's gelu (erf form) computes it in float32 from a linear layer's rounded output.
template <typename T>
__device__ __forceinline__ float gelu_of_rounded(float v) {
  const float x = rounded<T>(v);
  return x * 0.5f * (1.0f + erff(x * static_cast<float>(M_SQRT1_2)));
}

// log2 of a 4-bit blocksize (a power of two): kernels index absmax with a shift.
inline int log2_of(int64_t power_of_two) {
  int log2 = 0;
  while ((int64_t{1} << log2) < power_of_two) ++log2;
  return log2;
}

inline bool is_aligned_16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

}  // namespace imagetotext::ops::cuda
