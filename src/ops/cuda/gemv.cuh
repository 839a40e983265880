// The fused dequantize-GEMV behind gemm_4bit and gemm_int8_weight_only for few rows of A (decode, small
// batches): out[m, n] = sum_k A[m, k] * W[n, k] + bias[n] with W read once, straight from its packed form.
//
// Geometry: at most one wave of CTAs of kGemvWarps warps; a warp takes one output column n (one row of W) at a
// time, then the column a grid's worth of warps further. Lane l streams the 16-byte chunks l, l+32, ... of that
// row (coalesced: a warp reads 512 contiguous bytes per step), with kGemvFirstChunks chunks of the row's start,
// then kGemvUnroll at a time, in flight before the first is used; it decodes a chunk into float registers with the
// format's decoder and multiplies it with every row of A (at most kRows, a compile-time tile, so the weights are
// read once for all rows). A is small and stays in L1/L2. Accumulation is float32; one warp reduction per row,
// one rounding to A's dtype at the end (bias added in float32 first). Launched overlapped (launch.cuh): the first
// row's first chunks are loaded before the wait for the previous kernel.
//
// Fusions (ops::GemmFusion): gelu of the rounded output and a residual added to it, at any row count; and for
// one row of A, the input itself: rms_norm(A) or silu_mul of A's two halves, staged once per CTA in shared
// memory (see stage_input). A decode step then runs no norm or activation kernel between its GEMVs. (A
// LayerNorm input is the tensor-core GEMV's, gemv_mma.cuh.)
#pragma once

#include <ATen/Dispatch.h>

#include <algorithm>
#include <optional>
#include <type_traits>

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

// Chunks per lane loaded for a row's start (before the wait, for the first row). A gated input is an MLP's
// hidden activation, so its K is a few times the model's width (SmolVLM's down_proj: K = 1536 or 2560, 6 or 10
// bfloat16 chunks a lane): enough for a row of K = 4096, at most 12, so the row is loaded before the wait (at 4,
// the 500M down_proj waited for two more HBM round trips after it: 5.7 us a layer on the H100, 4.4 at 12). The
// others keep kGemvUnroll and their registers (168 instead of 128 would leave 3 CTAs an SM instead of 4).
template <GemvInput kInput, int kWeightsPerChunk>
constexpr int kGemvFirstChunks =
    kInput == GemvInput::gated ? std::clamp(4096 / (kWarpSize * kWeightsPerChunk), kGemvUnroll, 12) : kGemvUnroll;

template <typename scalar_t>
struct GemvFusionArgs {
  const scalar_t* norm_weight;  // GemvInput::rms_norm: [K]
  float norm_eps;
  const scalar_t* residual;  // nullptr, or [rows, N]: added to the rounded output
  bool gelu;                 // gelu of the rounded output, before the residual
};

// A fused input is staged: the CTA computes the one input row once into shared memory (each thread up to
// kStageChunks 16-byte chunks of it, so K up to kStageChunks * kGemvThreads chunks), and every warp's dot
// products read it there. Computing it per warp instead cost a second pass over A after the wait (measured on
// the H100: 0.78 -> 0.88 ms a SmolVLM-256M token).
constexpr int kStageChunks = 4;

// sum_i a[i] * w[i] over one chunk of kWeights values of the input row, read as 16-byte loads.
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

// The norm's weight for the chunks this thread stages: a weight, so it is loaded before the wait.
template <GemvInput kInput, typename scalar_t>
struct StageWeights {
  float gamma[kInput == GemvInput::rms_norm ? kStageChunks : 1][kPerChunk<scalar_t>];

  __device__ __forceinline__ void load(const scalar_t* norm_weight, int64_t K) {
    if constexpr (kInput == GemvInput::rms_norm) {
      constexpr int kPer = kPerChunk<scalar_t>;
#pragma unroll
      for (int s = 0; s < kStageChunks; ++s) {
        const int64_t c = threadIdx.x + s * kGemvThreads;
        if (c < K / kPer) load_chunk_as_float(norm_weight + c * kPer, gamma[s]);
      }
    }
  }
};

// The input row into `staged` [K], each value rounded as the composition rounds it: rms_norm's
// dtype(weight * dtype(x * inverse)), silu_mul's dtype(dtype(silu(gate)) * up). a: A's row ([2K] when gated).
// Every thread of the CTA takes part (a CTA-wide sum and __syncthreads).
template <GemvInput kInput, typename scalar_t>
__device__ __forceinline__ void stage_input(const scalar_t* a, int64_t K, const StageWeights<kInput, scalar_t>& weights,
                                            float eps, scalar_t* staged) {
  constexpr int kPer = kPerChunk<scalar_t>;
  const int64_t chunks = K / kPer;
  float values[kStageChunks][kPer];
  float up[kStageChunks][kPer];
#pragma unroll
  for (int s = 0; s < kStageChunks; ++s) {  // every load first
    const int64_t c = threadIdx.x + s * kGemvThreads;
    if (c < chunks) {
      load_chunk_as_float(a + c * kPer, values[s]);
      if constexpr (kInput == GemvInput::gated) load_chunk_as_float(a + K + c * kPer, up[s]);
    }
  }
  float inverse = 1.0f;
  if constexpr (kInput == GemvInput::rms_norm) {
    float squares = 0.0f;
#pragma unroll
    for (int s = 0; s < kStageChunks; ++s) {
      if (threadIdx.x + s * kGemvThreads < chunks) {
#pragma unroll
        for (int i = 0; i < kPer; ++i) squares = fmaf(values[s][i], values[s][i], squares);
      }
    }
    inverse = rsqrtf(block_sum(squares) / static_cast<float>(K) + eps);
  }
#pragma unroll
  for (int s = 0; s < kStageChunks; ++s) {
    const int64_t c = threadIdx.x + s * kGemvThreads;
    if (c < chunks) {
      uint4 packed;
      scalar_t* out = reinterpret_cast<scalar_t*>(&packed);
#pragma unroll
      for (int i = 0; i < kPer; ++i) {
        const float x = values[s][i];
        if constexpr (kInput == GemvInput::rms_norm) {
          out[i] = rms_normed<scalar_t>(x, inverse, weights.gamma[s][i]);
        } else {
          out[i] = silu_times<scalar_t>(x, up[s][i]);
        }
      }
      reinterpret_cast<uint4*>(staged)[c] = packed;
    }
  }
  __syncthreads();
}

// A warp with a few rows loads each after the one before it is done, after the wait for the previous kernel: one
// HBM round trip a row on the critical path (SmolVLM-500M's gate/up, 5120 rows for ~2100 resident warps, took
// 6.2 us a layer against 3.0 for its q/k/v). Before the wait, the warp asks L2 for its later rows (up to
// kPrefetchRows of them; a wide weight such as an lm_head streams past L2 anyway), so those loads hit L2. Only
// for a weight of at most a quarter of L2 (launch_gemv_grid): a 14336 x 4096 INT8 weight (58.7 MB, 3-4 rows a
// warp) prefetched three quarters of itself into the H100's 50 MB L2 at once and took 27.5 us a call instead of
// 23.4 (one call), its prefetched lines evicted before their loads.
constexpr int kPrefetchRows = 4;

template <typename Weights>
__device__ __forceinline__ void prefetch_later_rows(const Weights& weights, int64_t n, int64_t row_step, int64_t N,
                                                    int64_t chunks, int lane) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  if (n + kPrefetchRows * row_step < N) return;  // more rows than that: streamed
  const int r = lane / 4, q = lane % 4;                // lane 4r + q: a quarter of the later row r + 1's bytes
  const int64_t later = n + (r + 1) * row_step, quarter = (chunks + 3) / 4, first = q * quarter;
  const int64_t count = min(quarter, chunks - first);  // a bulk prefetch takes whole, 16-byte aligned chunks
  if (r < kPrefetchRows && later < N && count > 0) {
    asm volatile("cp.async.bulk.prefetch.L2.global [%0], %1;" ::"l"(weights.row(later, chunks) + first),
                 "r"(static_cast<unsigned>(count * 16))
                 : "memory");
  }
#endif
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
                const scalar_t* __restrict__ bias, GemvFusionArgs<scalar_t> fusion, bool prefetch_rows,
                scalar_t* __restrict__ out) {
  static_assert(kInput == GemvInput::plain || kRows == 1, "a fused input is one row");
  let_next_kernel_start();
  weights.prepare();
  constexpr int kWeights = Weights::kWeightsPerChunk;
  const int lane = threadIdx.x % kWarpSize;
  const int64_t row_step = static_cast<int64_t>(gridDim.x) * kGemvWarps;  // a warp's rows: n, n + row_step, ...
  int64_t n = blockIdx.x * static_cast<int64_t>(kGemvWarps) + threadIdx.x / kWarpSize;
  // A warp past the last weight row reads and writes nothing of its own: with a plain input it leaves now
  // (warp 0 of CTA 0 always waits, see launch.cuh), with a fused one once it has helped stage the input.
  if (kInput == GemvInput::plain && n >= N) return;
  const bool has_row = n < N;
  const int64_t chunks = K / kWeights;
  const uint4* row = weights.row(has_row ? n : 0, chunks);
  uint4 raw[kGemvFirstChunks<kInput, kWeights>] = {};
  float scale[kGemvFirstChunks<kInput, kWeights>] = {};
  auto load_chunks = [&](int64_t first, auto count) {  // all loads first: `count` chunks in flight per lane
#pragma unroll
    for (int u = 0; u < decltype(count)::value; ++u) {
      const int64_t c = first + u * kWarpSize;
      raw[u] = c < chunks ? __ldcs(row + c) : make_uint4(0, 0, 0, 0);  // streamed: each byte is read once
      scale[u] = c < chunks ? weights.chunk_scale(n, K, c) : 0.0f;
    }
  };
  constexpr std::integral_constant<int, kGemvFirstChunks<kInput, kWeights>> kFirst{};
  constexpr std::integral_constant<int, kGemvUnroll> kLater{};
  float acc[kRows];
  const scalar_t* input = A;  // the staged row for a fused input
  auto accumulate = [&](int64_t c, const float* w, float chunk_scale) {
#pragma unroll
    for (int m = 0; m < kRows; ++m) {
      if (m < rows) acc[m] = fmaf(dot_chunk<scalar_t, kWeights>(input + m * K + c * kWeights, w), chunk_scale, acc[m]);
    }
  };
  // Chunks u_begin.. of the batch of `count` loaded for `first`.
  auto accumulate_batch = [&](int64_t first, int u_begin, auto count) {
#pragma unroll
    for (int u = u_begin; u < decltype(count)::value; ++u) {
      const int64_t c = first + u * kWarpSize;
      if (c < chunks) {
        float w[kWeights];
        weights.decode(raw[u], w);
        accumulate(c, w, scale[u]);
      }
    }
  };
  // The first weights depend on no earlier kernel: they are loaded, and the first chunk decoded, while the
  // previous kernel finishes (at the decoders' small K that chunk is a lane's whole share); so is the norm's weight.
  if (has_row) load_chunks(lane, kFirst);
  // A weight too (INT8's SCB): loaded with the row's first chunks, not after its dot products.
  float row_scale = has_row ? weights.row_scale(n) : 1.0f;
  if (prefetch_rows) prefetch_later_rows(weights, n, row_step, N, chunks, lane);
  float first_chunk[kWeights];
  weights.decode(raw[0], first_chunk);
  StageWeights<kInput, scalar_t> stage_weights;
  stage_weights.load(fusion.norm_weight, K);
  const scalar_t* residual = fusion.residual;
  wait_for_previous_kernels(A, residual);
  if constexpr (kInput != GemvInput::plain) {
    extern __shared__ uint4 staged_words[];
    scalar_t* staged = reinterpret_cast<scalar_t*>(staged_words);
    stage_input<kInput, scalar_t>(A, K, stage_weights, fusion.norm_eps, staged);
    input = staged;
    if (!has_row) return;
  }
  // The grid is at most one wave (launch_gemv_tile), so a CTA stages a fused input once and its warps take
  // every row_step-th row: a wide weight (an lm_head's 49280 rows) pays the staging per resident CTA, not per
  // four rows.
  while (true) {
    // The residual is read now, so its latency hides behind the dot products.
    float residual_value[kRows];
#pragma unroll
    for (int m = 0; m < kRows; ++m) {
      acc[m] = 0.0f;
      residual_value[m] =
          residual != nullptr && lane == 0 && m < rows ? static_cast<float>(residual[m * N + n]) : 0.0f;
    }
    if (lane < chunks) accumulate(lane, first_chunk, scale[0]);
    accumulate_batch(lane, 1, kFirst);
    for (int64_t first = lane + kWarpSize * kFirst.value; first < chunks; first += kWarpSize * kGemvUnroll) {
      load_chunks(first, kLater);
      accumulate_batch(first, 0, kLater);
    }
#pragma unroll
    for (int m = 0; m < kRows; ++m) {
      if (m < rows) {  // uniform across the warp: the shuffles see all lanes
        float sum = warp_sum(acc[m]) * row_scale;
        if (lane == 0) {
          if (bias != nullptr) sum += static_cast<float>(bias[n]);
          if (fusion.gelu) sum = gelu_of_rounded<scalar_t>(sum);
          if (residual != nullptr) sum = residual_value[m] + rounded<scalar_t>(sum);
          out[m * N + n] = static_cast<scalar_t>(sum);
        }
      }
    }
    n += row_step;
    if (n >= N) return;
    row = weights.row(n, chunks);
    load_chunks(lane, kFirst);
    row_scale = weights.row_scale(n);
    weights.decode(raw[0], first_chunk);
  }
}

// Whether the fused GEMV can take the problem: few rows, whole 16-byte chunks per weight row (K a
// multiple of the chunk's values) and 16-byte aligned weights and A, so every chunk load is one vector; a
// fused input (norm or gated) for one row of up to kStageChunks * kGemvThreads chunks only, with a
// contiguous, 16-byte aligned norm weight; no LayerNorm input (norm_bias, normed_out). Otherwise the caller
// composes the input and passes epilogue_of(fusion) (gelu and a residual are always fused).
inline bool gemv_applies(const at::Tensor& A, int64_t rows, int64_t K, int weights_per_chunk, const void* weights,
                         const GemmFusion& fusion = {}) {
  if (fusion.norm_bias || fusion.normed_out) return false;
  if (fusion.gated || fusion.norm_weight) {
    const int64_t input_chunks = K * static_cast<int64_t>(A.element_size()) / 16;
    if (rows != 1 || input_chunks > kStageChunks * kGemvThreads) return false;
  }
  if (fusion.norm_weight && (!fusion.norm_weight->is_contiguous() || !is_aligned_16(fusion.norm_weight->data_ptr()))) {
    return false;
  }
  return rows <= kMaxGemvRows && K % weights_per_chunk == 0 && is_aligned_16(weights) && is_aligned_16(A.data_ptr());
}

// kKernel (a gemv_kernel instantiation) on a grid of one wave at most: the CTAs an SM holds (with the widest
// staged row) on every SM, each warp looping over rows.
template <auto kKernel, typename Weights, typename scalar_t>
void launch_gemv_grid(const at::Tensor& A, int64_t rows, const Weights& weights, int64_t N, int64_t K,
                      const scalar_t* bias, const GemvFusionArgs<scalar_t>& args, size_t staged_bytes, at::Tensor& out) {
  constexpr int kMaxStagedBytes = kStageChunks * kGemvThreads * 16;
  const int64_t ctas_per_sm = resident_ctas_per_sm<kKernel>(kGemvThreads, kMaxStagedBytes);
  const cudaDeviceProp* device = at::cuda::getCurrentDeviceProperties();
  const int64_t ctas = std::min<int64_t>((N + kGemvWarps - 1) / kGemvWarps, ctas_per_sm * device->multiProcessorCount);
  const int64_t weight_bytes = N * (K / Weights::kWeightsPerChunk) * 16;
  const bool prefetch_rows = weight_bytes <= int64_t{device->l2CacheSize} / 4;
  launch_overlapped(kKernel, dim3(static_cast<unsigned>(ctas)), dim3(kGemvThreads), staged_bytes,
                    A.data_ptr<scalar_t>(), static_cast<int>(rows), weights, N, K, bias, args, prefetch_rows,
                    out.data_ptr<scalar_t>());
}

// The GEMV with the tile of kRows rows and the fusion (gemv_applies held for it; out has the output's shape,
// and so has the residual, checked by the caller).
template <typename Weights, typename scalar_t, int kRows>
void launch_gemv_tile(const at::Tensor& A, int64_t rows, const Weights& weights, int64_t N, int64_t K,
                      const scalar_t* bias, const GemmFusion& fusion, at::Tensor& out) {
  const at::Tensor residual = fusion.residual ? fusion.residual->contiguous() : at::Tensor();
  const GemvFusionArgs<scalar_t> args{fusion.norm_weight ? fusion.norm_weight->data_ptr<scalar_t>() : nullptr,
                                      static_cast<float>(fusion.norm_eps),
                                      fusion.residual ? residual.data_ptr<scalar_t>() : nullptr, fusion.gelu};
  const bool staged = fusion.norm_weight || fusion.gated;
  const size_t staged_bytes = staged ? static_cast<size_t>(K) * sizeof(scalar_t) : 0;
  if constexpr (kRows == 1) {
    if (fusion.norm_weight) {
      return launch_gemv_grid<&gemv_kernel<Weights, scalar_t, 1, GemvInput::rms_norm>>(A, rows, weights, N, K, bias,
                                                                                       args, staged_bytes, out);
    }
    if (fusion.gated) {
      return launch_gemv_grid<&gemv_kernel<Weights, scalar_t, 1, GemvInput::gated>>(A, rows, weights, N, K, bias,
                                                                                     args, staged_bytes, out);
    }
  }
  TORCH_INTERNAL_ASSERT(!fusion.norm_weight && !fusion.gated, "gemv: a fused input takes one row of A");
  launch_gemv_grid<&gemv_kernel<Weights, scalar_t, kRows, GemvInput::plain>>(A, rows, weights, N, K, bias, args,
                                                                             staged_bytes, out);
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
