// The fused dequantize-GEMV behind gemm_4bit and gemm_int8_weight_only for few rows of A (decode, small
// batches): out[m, n] = sum_k A[m, k] * W[n, k] + bias[n] with W read once, straight from its packed form.
//
// Geometry: CTAs of kGemvWarps warps, one warp per output column n (one row of W). Lane l streams the
// 16-byte chunks l, l+32, ... of that row (coalesced: a warp reads 512 contiguous bytes per step), with
// kGemvUnroll chunks in flight before the first is used; it decodes a chunk into float registers with the
// format's decoder and multiplies it with every row of A (at most kRows, a compile-time tile, so the
// weights are read once for all rows). A is small and stays in L1/L2. Accumulation is float32; one warp
// reduction per row, one rounding to A's dtype at the end (bias added in float32 first). Launched overlapped
// (launch.cuh): the first chunks are loaded before the wait for the previous kernel.
#pragma once

#include <ATen/Dispatch.h>

#include <optional>

#include "blockwise.cuh"
#include "launch.cuh"

namespace imagetotext::ops::cuda {

// Rows of A up to which gemm_* may run this SIMT GEMV (float32 A; for float16/bfloat16 the ops use it only
// for one or two rows of small weights and prefer the tensor-core GEMV, gemv_mma.cuh); above, the
// tensor-core paths win, as
// the SIMT GEMV's float32 FMAs per weight grow with M. Measured on the H100
// (benchmarks/results/quant_gemm_h100-2026-11-22.md): at M = 8 the GEMV still wins at the models' shapes,
// at M = 16 it loses everywhere (up to 2x against dequantize + cuBLAS).
constexpr int64_t kMaxGemvRows = 8;
constexpr int kGemvWarps = 4;
constexpr int kGemvThreads = kGemvWarps * kWarpSize;
constexpr int kGemvUnroll = 4;

// sum_i a[i] * w[i] over one chunk of kWeights values of A's row, read as 16-byte loads.
template <typename scalar_t, int kWeights>
__device__ __forceinline__ float dot_chunk(const scalar_t* a, const float* w) {
  constexpr int kPer = kPerChunk<scalar_t>;
  float dot = 0.0f;
#pragma unroll
  for (int v = 0; v < kWeights / kPer; ++v) {
    float values[kPer];
    load_chunk_as_float(a + v * kPer, values);
#pragma unroll
    for (int i = 0; i < kPer; ++i) dot = fmaf(values[i], w[v * kPer + i], dot);
  }
  return dot;
}

// Weights: the format's decoder (see gemm_4bit.cu, gemm_int8_weight_only.cu) with
//   kWeightsPerChunk                       values in one 16-byte chunk;
//   prepare()                              per-CTA setup (shared tables), ends with __syncthreads;
//   row(n, chunks) -> const uint4*         the first chunk of row n;
//   chunk_scale(n, K, c) -> float          the scale of chunk c of row n (applied to its dot product);
//   decode(uint4, float*)                  the chunk's values, unscaled;
//   row_scale(n) -> float                  the scale of the whole row n (applied after the reduction).
template <typename Weights, typename scalar_t, int kRows>
__global__ void __launch_bounds__(kGemvThreads)
    gemv_kernel(const scalar_t* A, int rows, Weights weights, int64_t N, int64_t K,
                const scalar_t* __restrict__ bias, scalar_t* __restrict__ out) {
  let_next_kernel_start();
  weights.prepare();
  constexpr int kWeights = Weights::kWeightsPerChunk;
  const int lane = threadIdx.x % kWarpSize;
  const int64_t n = blockIdx.x * static_cast<int64_t>(kGemvWarps) + threadIdx.x / kWarpSize;
  if (n >= N) return;  // reads and writes nothing (warp 0 of CTA 0 always waits, see launch.cuh)
  const int64_t chunks = K / kWeights;
  const uint4* row = weights.row(n, chunks);
  uint4 raw[kGemvUnroll];
  float scale[kGemvUnroll];
  auto load_chunks = [&](int64_t first) {  // all loads first: kGemvUnroll chunks in flight per lane
#pragma unroll
    for (int u = 0; u < kGemvUnroll; ++u) {
      const int64_t c = first + u * kWarpSize;
      raw[u] = c < chunks ? __ldcs(row + c) : make_uint4(0, 0, 0, 0);  // streamed: each byte is read once
      scale[u] = c < chunks ? weights.chunk_scale(n, K, c) : 0.0f;
    }
  };
  float acc[kRows];
#pragma unroll
  for (int m = 0; m < kRows; ++m) acc[m] = 0.0f;
  auto accumulate = [&](int64_t c, const float* w, float chunk_scale) {
#pragma unroll
    for (int m = 0; m < kRows; ++m) {
      if (m < rows) acc[m] = fmaf(dot_chunk<scalar_t, kWeights>(A + m * K + c * kWeights, w), chunk_scale, acc[m]);
    }
  };
  // Chunks u_begin.. of the batch loaded for `first`.
  auto accumulate_batch = [&](int64_t first, int u_begin) {
#pragma unroll
    for (int u = u_begin; u < kGemvUnroll; ++u) {
      const int64_t c = first + u * kWarpSize;
      if (c < chunks) {
        float w[kWeights];
        weights.decode(raw[u], w);
        accumulate(c, w, scale[u]);
      }
    }
  };
  // The first weights depend on no earlier kernel: they are loaded, and the first chunk decoded, while the
  // previous kernel finishes (at the decoders' small K that chunk is a lane's whole share).
  load_chunks(lane);
  float first_chunk[kWeights];
  weights.decode(raw[0], first_chunk);
  wait_for_previous_kernels(A);
  if (lane < chunks) accumulate(lane, first_chunk, scale[0]);
  accumulate_batch(lane, 1);
  for (int64_t first = lane + kWarpSize * kGemvUnroll; first < chunks; first += kWarpSize * kGemvUnroll) {
    load_chunks(first);
    accumulate_batch(first, 0);
  }
  const float row_scale = weights.row_scale(n);
#pragma unroll
  for (int m = 0; m < kRows; ++m) {
    if (m < rows) {  // uniform across the warp: the shuffles see all lanes
      float sum = warp_sum(acc[m]) * row_scale;
      if (lane == 0) {
        if (bias != nullptr) sum += static_cast<float>(bias[n]);
        out[m * N + n] = static_cast<scalar_t>(sum);
      }
    }
  }
}

// Whether the fused GEMV can take the problem: few rows, whole 16-byte chunks per weight row (K a
// multiple of the chunk's values) and 16-byte aligned weights and A, so every chunk load is one vector.
inline bool gemv_applies(int64_t rows, int64_t K, int weights_per_chunk, const void* weights, const void* A) {
  return rows <= kMaxGemvRows && K % weights_per_chunk == 0 && is_aligned_16(weights) && is_aligned_16(A);
}

template <typename Weights, typename scalar_t, int kRows>
void launch_gemv_tile(const at::Tensor& A, int64_t rows, const Weights& weights, int64_t N, int64_t K,
                      const scalar_t* bias, at::Tensor& out) {
  const int64_t ctas = (N + kGemvWarps - 1) / kGemvWarps;
  launch_overlapped(&gemv_kernel<Weights, scalar_t, kRows>, dim3(static_cast<unsigned>(ctas)), dim3(kGemvThreads), 0,
                    A.data_ptr<scalar_t>(), static_cast<int>(rows), weights, N, K, bias, out.data_ptr<scalar_t>());
}

// out [rows, N] (A's dtype) = A [rows, K] (contiguous, rows <= kMaxGemvRows) times the weights, plus bias.
// The row tile is the smallest of 1, 2, 4, 8 that holds `rows`.
template <typename Weights>
void launch_gemv(const at::Tensor& A, int64_t rows, const Weights& weights, int64_t N, int64_t K,
                 const std::optional<at::Tensor>& bias, at::Tensor& out) {
  if (rows == 0 || N == 0) return;
  const at::Tensor bias_values = bias ? bias->contiguous() : at::Tensor();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, A.scalar_type(), "gemv", [&] {
    const scalar_t* bias_ptr = bias ? bias_values.data_ptr<scalar_t>() : nullptr;
    if (rows <= 1) {
      launch_gemv_tile<Weights, scalar_t, 1>(A, rows, weights, N, K, bias_ptr, out);
    } else if (rows <= 2) {
      launch_gemv_tile<Weights, scalar_t, 2>(A, rows, weights, N, K, bias_ptr, out);
    } else if (rows <= 4) {
      launch_gemv_tile<Weights, scalar_t, 4>(A, rows, weights, N, K, bias_ptr, out);
    } else {
      static_assert(kMaxGemvRows == 8, "add a row tile for the new kMaxGemvRows");
      launch_gemv_tile<Weights, scalar_t, 8>(A, rows, weights, N, K, bias_ptr, out);
    }
  });
}

// Rows of A [..., K]: the product of its leading sizes (also right when K is 0).
inline int64_t leading_rows(const at::Tensor& A) {
  int64_t rows = 1;
  for (int64_t d = 0; d + 1 < A.dim(); ++d) rows *= A.size(d);
  return rows;
}

}  // namespace imagetotext::ops::cuda
