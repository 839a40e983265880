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
//
// Fusions (ops::GemmFusion): a residual added to the rounded output, at any row count; and for one row of A,
// the input itself: rms_norm(A) (each warp sums A's squares itself, then norms each value as it loads it) or
// silu_mul of A's two halves. A decode step then runs no norm or activation kernel between its GEMVs.
#pragma once

#include <ATen/Dispatch.h>

#include <optional>

#include "blockwise.cuh"
#include "imagetotext/quant/quantize.hpp"
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

// What the GEMV multiplies the weights with: A's row, rms_norm of it, or silu_mul of its halves.
enum class GemvInput { plain, rms_norm, gated };

template <typename scalar_t>
struct GemvFusionArgs {
  const scalar_t* norm_weight;  // GemvInput::rms_norm: [K]
  float norm_eps;
  const scalar_t* residual;  // nullptr, or [rows, N]: added to the rounded output
};

// The kPerChunk input values at k of the row `a` (A's row; [2K] when gated), as the composition rounds them:
// rms_norm's value = dtype(weight * dtype(x * inverse)), silu_mul's dtype(dtype(silu(gate)) * up).
template <GemvInput kInput, typename scalar_t>
__device__ __forceinline__ void load_input(const scalar_t* a, int64_t k, int64_t K, const scalar_t* norm_weight,
                                           float inverse, float* values) {
  constexpr int kPer = kPerChunk<scalar_t>;
  load_chunk_as_float(a + k, values);
  if constexpr (kInput == GemvInput::rms_norm) {
    float gamma[kPer];
    load_chunk_as_float(norm_weight + k, gamma);
#pragma unroll
    for (int i = 0; i < kPer; ++i) values[i] = rounded<scalar_t>(gamma[i] * rounded<scalar_t>(values[i] * inverse));
  } else if constexpr (kInput == GemvInput::gated) {
    float up[kPer];
    load_chunk_as_float(a + K + k, up);
#pragma unroll
    for (int i = 0; i < kPer; ++i) {
      values[i] = rounded<scalar_t>(rounded<scalar_t>(values[i] / (1.0f + expf(-values[i]))) * up[i]);
    }
  }
}

// sum_i input[k + i] * w[i] over one chunk of kWeights values, read as 16-byte loads.
template <GemvInput kInput, typename scalar_t, int kWeights>
__device__ __forceinline__ float dot_chunk(const scalar_t* a, int64_t k, int64_t K, const scalar_t* norm_weight,
                                           float inverse, const float* w) {
  constexpr int kPer = kPerChunk<scalar_t>;
  float dot = 0.0f;
#pragma unroll
  for (int v = 0; v < kWeights / kPer; ++v) {
    float values[kPer];
    load_input<kInput, scalar_t>(a, k + v * kPer, K, norm_weight, inverse, values);
#pragma unroll
    for (int i = 0; i < kPer; ++i) dot = fmaf(values[i], w[v * kPer + i], dot);
  }
  return dot;
}

// 1 / rms of the row a [K] (rsqrt(mean(a^2) + eps)), summed by one warp.
template <typename scalar_t>
__device__ __forceinline__ float inverse_rms(const scalar_t* a, int64_t K, float eps) {
  constexpr int kPer = kPerChunk<scalar_t>;
  float squares = 0.0f;
  for (int64_t c = threadIdx.x % kWarpSize; c < K / kPer; c += kWarpSize) {
    float values[kPer];
    load_chunk_as_float(a + c * kPer, values);
#pragma unroll
    for (int i = 0; i < kPer; ++i) squares = fmaf(values[i], values[i], squares);
  }
  return rsqrtf(warp_sum(squares) / static_cast<float>(K) + eps);
}

// Weights: the format's decoder (see gemm_4bit.cu, gemm_int8_weight_only.cu) with
//   kWeightsPerChunk                       values in one 16-byte chunk;
//   prepare()                              per-CTA setup (shared tables), ends with __syncthreads;
//   row(n, chunks) -> const uint4*         the first chunk of row n;
//   chunk_scale(n, K, c) -> float          the scale of chunk c of row n (applied to its dot product);
//   decode(uint4, float*)                  the chunk's values, unscaled;
//   row_scale(n) -> float                  the scale of the whole row n (applied after the reduction).
template <typename Weights, typename scalar_t, int kRows, GemvInput kInput>
__global__ void __launch_bounds__(kGemvThreads)
    gemv_kernel(const scalar_t* A, int rows, Weights weights, int64_t N, int64_t K,
                const scalar_t* __restrict__ bias, GemvFusionArgs<scalar_t> fusion, scalar_t* __restrict__ out) {
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
  const int64_t a_stride = kInput == GemvInput::gated ? 2 * K : K;
  float inverse[kRows];  // GemvInput::rms_norm: each row's 1 / rms, once the wait is over
  auto accumulate = [&](int64_t c, const float* w, float chunk_scale) {
#pragma unroll
    for (int m = 0; m < kRows; ++m) {
      if (m < rows) {
        const float dot = dot_chunk<kInput, scalar_t, kWeights>(A + m * a_stride, c * kWeights, K,
                                                                fusion.norm_weight, inverse[m], w);
        acc[m] = fmaf(dot, chunk_scale, acc[m]);
      }
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
  const scalar_t* residual = fusion.residual;
  wait_for_previous_kernels(A, residual);
#pragma unroll
  for (int m = 0; m < kRows; ++m) {
    inverse[m] = kInput == GemvInput::rms_norm && m < rows ? inverse_rms(A + m * K, K, fusion.norm_eps) : 1.0f;
  }
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
        if (residual != nullptr) sum = static_cast<float>(residual[m * N + n]) + rounded<scalar_t>(sum);
        out[m * N + n] = static_cast<scalar_t>(sum);
      }
    }
  }
}

// Whether the fused GEMV can take the problem: few rows, whole 16-byte chunks per weight row (K a
// multiple of the chunk's values) and 16-byte aligned weights and A, so every chunk load is one vector; a
// fused input (norm or gated) for one row only, with a contiguous, 16-byte aligned norm weight. Any other
// fusion is composed around the GEMV (a residual is always fused).
inline bool gemv_applies(int64_t rows, int64_t K, int weights_per_chunk, const void* weights, const void* A,
                         const GemmFusion& fusion = {}) {
  if (fusion.gated && rows != 1) return false;
  if (fusion.norm_weight &&
      (rows != 1 || !fusion.norm_weight->is_contiguous() || !is_aligned_16(fusion.norm_weight->data_ptr()))) {
    return false;
  }
  return rows <= kMaxGemvRows && K % weights_per_chunk == 0 && is_aligned_16(weights) && is_aligned_16(A);
}

// The GEMV with the tile of kRows rows and the fusion (gemv_applies held for it; out has the output's shape,
// and so has the residual, checked by the caller).
template <typename Weights, typename scalar_t, int kRows>
void launch_gemv_tile(const at::Tensor& A, int64_t rows, const Weights& weights, int64_t N, int64_t K,
                      const scalar_t* bias, const GemmFusion& fusion, at::Tensor& out) {
  const at::Tensor residual = fusion.residual ? fusion.residual->contiguous() : at::Tensor();
  const GemvFusionArgs<scalar_t> args{fusion.norm_weight ? fusion.norm_weight->data_ptr<scalar_t>() : nullptr,
                                      static_cast<float>(fusion.norm_eps),
                                      fusion.residual ? residual.data_ptr<scalar_t>() : nullptr};
  const int64_t ctas = (N + kGemvWarps - 1) / kGemvWarps;
  auto launch = [&](auto* kernel) {
    launch_overlapped(kernel, dim3(static_cast<unsigned>(ctas)), dim3(kGemvThreads), 0, A.data_ptr<scalar_t>(),
                      static_cast<int>(rows), weights, N, K, bias, args, out.data_ptr<scalar_t>());
  };
  if constexpr (kRows == 1) {
    if (fusion.norm_weight) return launch(&gemv_kernel<Weights, scalar_t, 1, GemvInput::rms_norm>);
    if (fusion.gated) return launch(&gemv_kernel<Weights, scalar_t, 1, GemvInput::gated>);
  }
  TORCH_INTERNAL_ASSERT(!fusion.norm_weight && !fusion.gated, "gemv: a fused input takes one row of A");
  launch(&gemv_kernel<Weights, scalar_t, kRows, GemvInput::plain>);
}

// out [rows, N] (A's dtype) = the input (A [rows, K] contiguous, rows <= kMaxGemvRows, or as the fusion says)
// times the weights, plus bias, plus the fusion's residual. The row tile is the smallest of 1, 2, 4, 8 that
// holds `rows`.
template <typename Weights>
void launch_gemv(const at::Tensor& A, int64_t rows, const Weights& weights, int64_t N, int64_t K,
                 const std::optional<at::Tensor>& bias, const GemmFusion& fusion, at::Tensor& out) {
  if (rows == 0 || N == 0) return;
  const at::Tensor bias_values = bias ? bias->contiguous() : at::Tensor();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, A.scalar_type(), "gemv", [&] {
    const scalar_t* bias_ptr = bias ? bias_values.data_ptr<scalar_t>() : nullptr;
    if (rows <= 1) {
      launch_gemv_tile<Weights, scalar_t, 1>(A, rows, weights, N, K, bias_ptr, fusion, out);
    } else if (rows <= 2) {
      launch_gemv_tile<Weights, scalar_t, 2>(A, rows, weights, N, K, bias_ptr, fusion, out);
    } else if (rows <= 4) {
      launch_gemv_tile<Weights, scalar_t, 4>(A, rows, weights, N, K, bias_ptr, fusion, out);
    } else {
      static_assert(kMaxGemvRows == 8, "add a row tile for the new kMaxGemvRows");
      launch_gemv_tile<Weights, scalar_t, 8>(A, rows, weights, N, K, bias_ptr, fusion, out);
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
