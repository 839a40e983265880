// The tensor-core GEMV behind gemm_4bit and gemm_int8_weight_only for float16/bfloat16 A with up to
// kMaxMmaRows rows (decode, beams, small batches): out[m, n] = sum_k A[m, k] * W[n, k] + bias[n], W read
// once, straight from its packed form, for all rows of A.
//
// Why tensor cores for a GEMV: the SIMT GEMV (gemv.cuh) spends a table lookup, a conversion and an FMA
// per weight per row of A, so it is bound by instructions, not memory, and its cost grows with M. Here
// each lane decodes its weights once into 16-bit pairs (one shared-memory lookup and one packed multiply
// per two 4-bit weights) and mma.sync m16n8k16 multiplies them with up to 8 rows of A per instruction:
// the decode is shared by every row, and the multiply-adds cost almost nothing.
//
// Geometry. A CTA owns tiles of 16 weight rows (the mma's M side; A's rows are its N side, 8 per mma) and
// loops over them (a persistent grid: the decode table is built once per CTA). Its kMmaWarps warps split K:
// a warp step covers 4 consecutive 16-byte chunks of each of the 16 rows; lane (g = lane / 4, t = lane % 4)
// streams chunk t of rows g and g + 8 (`ld.global.cs`, kMmaUnroll steps in flight). The sum over k does not
// care about order, so the mma's k positions are assigned to suit the loads: in mma j of a chunk, lane t's
// k pair (2t, 2t+1) is the chunk's elements 4j, 4j+1 and its pair (2t+8, 2t+9) is 4j+2, 4j+3 — in both
// operands. Then each lane needs A only at its own chunk's k range (16-byte loads, L1/L2 hits) and a 4-bit
// chunk lies in one quantization block (K % 32 == 0, blocksize >= 32). Partial sums of the warps meet in
// shared memory; the format's row scale, the bias and one rounding to A's dtype finish (then gelu and a
// residual, if asked, each rounded again: ops::GemmFusion's epilogue).
//
// A normed input (ops::GemmFusion's norm_weight: RMSNorm, or LayerNorm with norm_bias) is staged: after the
// wait for the previous kernel, warp m norms row m of A (at most kMmaWarps rows) into shared memory, rounded as
// the composition rounds it, and the lanes read their A chunks there instead of from global memory. Each CTA
// also writes its share of the normed rows to normed_out when asked (a post-norm layer's residual), so a
// post-norm decoder runs no norm kernel between its GEMVs.
//
// Numerics: products and sums in float32 on the tensor cores. A 4-bit weight is the 16-bit code value times
// the block's absmax in A's dtype (code value, absmax and product each rounded once, as bitsandbytes'
// GEMV does it); an INT8 weight is its integer, exact, and SCB / 127 scales the float32 sum.
#pragma once

#include <ATen/Dispatch.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAFunctions.h>
#include <c10/cuda/CUDAException.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <optional>

#include "blockwise.cuh"
#include "imagetotext/quant/quantize.hpp"
#include "launch.cuh"

namespace imagetotext::ops::cuda {

constexpr int kMmaWarps = 8;
constexpr int kMmaThreads = kMmaWarps * kWarpSize;
constexpr int kMmaTileN = 16;                      // weight rows per tile: the mma's M side
constexpr int kMmaTileM = 8;                       // rows of A per mma: its N side
constexpr int kMmaChunksPerStep = 4;               // lanes t = 0..3 of a group: 4 chunks of one row
constexpr int kMmaUnroll = 4;                      // warp steps whose loads are in flight together
// The most rows of A this GEMV takes (8 per m-tile: 1, 2, 4 or 8 tiles). The decode is paid once whatever
// M is, but every 8 rows add A loads and mmas; each op sets its own limit from the benchmark.
constexpr int64_t kMaxMmaRows = 64;

// 16-bit float pairs as the mma takes them, for c10::Half and c10::BFloat16.
template <typename scalar_t>
struct Half2Ops;

template <>
struct Half2Ops<c10::BFloat16> {
  __device__ static uint16_t bits(float v) { return __bfloat16_as_ushort(__float2bfloat16_rn(v)); }
  // a * b + (-0): the product rounded once (PTX has no bfloat16x2 mul before sm_90).
  __device__ static uint32_t mul(uint32_t a, uint32_t b) {
    uint32_t r;
    asm("fma.rn.bf16x2 %0, %1, %2, %3;\n" : "=r"(r) : "r"(a), "r"(b), "r"(0x80008000u));
    return r;
  }
  __device__ static void mma(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
    asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
  // int8 bytes 0, 1 (lo) and 2, 3 (hi) of `word` as exact pairs: each byte + 128 in the mantissa of 2^23,
  // 2^23 + 128 subtracted in float32, the top halves kept (exact: |value| <= 128 has 8 significant bits).
  __device__ static void int8_pairs(uint32_t word, uint32_t& lo, uint32_t& hi) {
    const uint32_t offset_bytes = word ^ 0x80808080u;
    constexpr uint32_t kTwoPow23Bits = 0x4B000000u;
    constexpr float kBias = 8388736.0f;  // 2^23 + 128
    uint32_t f[4];
#pragma unroll
    for (int b = 0; b < 4; ++b) {
      f[b] = __float_as_uint(__uint_as_float(__byte_perm(offset_bytes, kTwoPow23Bits, 0x7540u + b)) - kBias);
    }
    lo = __byte_perm(f[0], f[1], 0x7632u);
    hi = __byte_perm(f[2], f[3], 0x7632u);
  }
};

template <>
struct Half2Ops<c10::Half> {
  __device__ static uint16_t bits(float v) { return __half_as_ushort(__float2half_rn(v)); }
  __device__ static uint32_t mul(uint32_t a, uint32_t b) {
    uint32_t r;
    asm("mul.rn.f16x2 %0, %1, %2;\n" : "=r"(r) : "r"(a), "r"(b));
    return r;
  }
  __device__ static void mma(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
    asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
  // As for bfloat16 with 1024 (0x6400) as the magic: 1024 + byte + 128 is exact in float16, then - 1152.
  __device__ static void int8_pairs(uint32_t word, uint32_t& lo, uint32_t& hi) {
    const uint32_t offset_bytes = word ^ 0x80808080u;
    constexpr uint32_t kMagic = 0x64646464u;
    const uint32_t lo_bits = __byte_perm(offset_bytes, kMagic, 0x5140u);
    const uint32_t hi_bits = __byte_perm(offset_bytes, kMagic, 0x7362u);
    const __half2 bias = __float2half2_rn(1152.0f);
    const __half2 l = __hsub2(*reinterpret_cast<const __half2*>(&lo_bits), bias);
    const __half2 h = __hsub2(*reinterpret_cast<const __half2*>(&hi_bits), bias);
    lo = *reinterpret_cast<const uint32_t*>(&l);
    hi = *reinterpret_cast<const uint32_t*>(&h);
  }
};

// What the GEMV multiplies the weights with: A's rows, or their RMSNorm or LayerNorm (staged).
enum class MmaInput { plain, rms_norm, layer_norm };

// The fusion's device side (ops::GemmFusion): the input norm's vectors and where the normed rows go, and the
// epilogue's gelu and residual.
template <typename scalar_t>
struct MmaFusion {
  const scalar_t* norm_weight = nullptr;  // [K], with a normed input
  const scalar_t* norm_bias = nullptr;    // [K], MmaInput::layer_norm
  float norm_eps = 0.0f;
  scalar_t* normed_out = nullptr;  // [rows, K] or nullptr
  const scalar_t* residual = nullptr;  // [rows, N] or nullptr
  bool gelu = false;
};

// Elements between two staged rows: K plus 64 bytes, so that the 8 rows a quarter warp reads start 64 bytes
// apart in the shared-memory banks (K * 2 bytes is a multiple of 128 at the models' widths).
__host__ __device__ inline int64_t mma_staged_stride(int64_t K) { return K + 32; }

// A staged row is held in registers while it is normed: up to kMmaStageChunks 16-byte chunks a lane.
constexpr int kMmaStageChunks = 4;
// The widest staged input: 1024 for float16/bfloat16 (Florence-2-large's width; SmolVLM's 576 and 960 fit).
constexpr int64_t kMaxMmaStagedK = kMmaStageChunks * kWarpSize * 8;

// Row `row` of A normed into `staged` by one warp, each value rounded as the composition rounds it: rms_norm's
// dtype(weight * dtype(x * inverse)); layer_norm's dtype(weight * ((x - mean) * rstd) + bias) with the mean and
// the variance (of x - mean) in float32. One pass of loads (the row stays in registers); the norm's weight and
// bias come from shared memory, where the CTA put them before its wait (`vectors`: weight [K], then bias [K]).
template <MmaInput kInput, typename scalar_t>
__device__ __forceinline__ void stage_normed_row(const scalar_t* row, int K, float eps, const scalar_t* vectors,
                                                 scalar_t* staged) {
  constexpr int kPer = kPerChunk<scalar_t>;
  const int lane = threadIdx.x % kWarpSize, chunks = K / kPer;
  float x[kMmaStageChunks][kPer];
#pragma unroll
  for (int s = 0; s < kMmaStageChunks; ++s) {
    const int c = lane + s * kWarpSize;
    if (c < chunks) load_chunk_as_float(row + c * kPer, x[s]);
  }
  float mean = 0.0f;
  if constexpr (kInput == MmaInput::layer_norm) {
    float sum = 0.0f;
#pragma unroll
    for (int s = 0; s < kMmaStageChunks; ++s) {
      if (lane + s * kWarpSize < chunks) {
#pragma unroll
        for (int i = 0; i < kPer; ++i) sum += x[s][i];
      }
    }
    mean = warp_sum(sum) / static_cast<float>(K);
  }
  float squares = 0.0f;
#pragma unroll
  for (int s = 0; s < kMmaStageChunks; ++s) {
    if (lane + s * kWarpSize < chunks) {
#pragma unroll
      for (int i = 0; i < kPer; ++i) squares = fmaf(x[s][i] - mean, x[s][i] - mean, squares);
    }
  }
  const float inverse = rsqrtf(warp_sum(squares) / static_cast<float>(K) + eps);
#pragma unroll
  for (int s = 0; s < kMmaStageChunks; ++s) {
    const int c = lane + s * kWarpSize;
    if (c >= chunks) continue;
    float gamma[kPer], beta[kPer];
    load_chunk_as_float(vectors + c * kPer, gamma);
    if constexpr (kInput == MmaInput::layer_norm) load_chunk_as_float(vectors + K + c * kPer, beta);
    uint4 packed;
    scalar_t* out = reinterpret_cast<scalar_t*>(&packed);
#pragma unroll
    for (int i = 0; i < kPer; ++i) {
      if constexpr (kInput == MmaInput::layer_norm) {
        out[i] = static_cast<scalar_t>(gamma[i] * ((x[s][i] - mean) * inverse) + beta[i]);
      } else {
        out[i] = rms_normed<scalar_t>(x[s][i], inverse, gamma[i]);
      }
    }
    reinterpret_cast<uint4*>(staged)[c] = packed;
  }
}

// Weights for mma_gemv_kernel (see gemm_4bit.cu, gemm_int8_weight_only.cu):
//   kK                                     weights in one 16-byte chunk of a row (32 or 16);
//   kSharedBytes                           shared memory for prepare()'s tables;
//   prepare(smem, scratch)                 per-CTA setup, ends with __syncthreads;
//   load(n, chunks, c) -> uint4            chunk c of row n (streamed);
//   chunk_scale(n, K, c) -> float          the chunk's scale, applied while decoding (0 for a missing chunk);
//   decode(smem, raw, scale, lo, hi)       lo[j] / hi[j]: the pairs of elements 4j, 4j+1 / 4j+2, 4j+3;
//   row_scale(n) -> float                  applied to the float32 sum.
template <typename Weights, typename scalar_t, int kMTiles, MmaInput kInput>
__global__ void __launch_bounds__(kMmaThreads, 2)
    mma_gemv_kernel(const scalar_t* A, int rows, Weights weights, int N, int K,
                    const scalar_t* __restrict__ bias, MmaFusion<scalar_t> fusion, scalar_t* __restrict__ out,
                    int tiles) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
  __trap();  // mma.sync with 16-bit inputs needs sm_80; the host never launches this on older devices
#else
  static_assert(kInput == MmaInput::plain || kMTiles == 1, "a staged input has one row per warp");
  using Ops = Half2Ops<scalar_t>;
  constexpr int kK = Weights::kK;
  constexpr int kPairs = kK / 4;          // mmas per chunk
  constexpr int kActLoads = kK * 2 / 16;  // 16-byte loads of A per chunk and row
  constexpr int kRowsPadded = kMTiles * kMmaTileM;
  extern __shared__ uint4 shared_words[];
  char* smem = reinterpret_cast<char*>(shared_words);
  float* partial = reinterpret_cast<float*>(smem + Weights::kSharedBytes);  // [warp][m][n], kMTiles * 8 m
  let_next_kernel_start();
  weights.prepare(smem, partial);  // the tables depend on no earlier kernel: built while the previous one ends
  // So do the norm's vectors (into shared memory, after the staged rows) and the first tile's first weights.
  scalar_t* staged = reinterpret_cast<scalar_t*>(partial + kMmaWarps * kRowsPadded * kMmaTileN);
  const int64_t staged_stride = mma_staged_stride(K);
  scalar_t* norm_vectors = staged + kMmaWarps * staged_stride;  // weight [K], bias [K]
  if constexpr (kInput != MmaInput::plain) {
    constexpr int kPer = kPerChunk<scalar_t>;
    const int chunks = K / kPer;
    for (int i = threadIdx.x; i < chunks; i += kMmaThreads) {
      reinterpret_cast<uint4*>(norm_vectors)[i] = reinterpret_cast<const uint4*>(fusion.norm_weight)[i];
      if constexpr (kInput == MmaInput::layer_norm) {
        reinterpret_cast<uint4*>(norm_vectors + K)[i] = reinterpret_cast<const uint4*>(fusion.norm_bias)[i];
      }
    }
  }
  const int warp = threadIdx.x / kWarpSize, lane = threadIdx.x % kWarpSize, g = lane / 4, t = lane % 4;
  const int chunks = K / kK;
  const int steps = (chunks + kMmaChunksPerStep - 1) / kMmaChunksPerStep;
  uint4 raw[kMmaUnroll][2];
  float scale[kMmaUnroll][2];
  // Weight rows n_lo and n_lo + 8, the kMmaUnroll warp steps from `first` on: every load first, kMmaUnroll steps
  // in flight per lane.
  auto load_batch = [&](int n_lo, int first) {
    const int n_hi = n_lo + 8;
#pragma unroll
    for (int u = 0; u < kMmaUnroll; ++u) {
      const int c = (first + u * kMmaWarps) * kMmaChunksPerStep + t;
      const bool lo_ok = c < chunks && n_lo < N, hi_ok = c < chunks && n_hi < N;
      raw[u][0] = lo_ok ? weights.load(n_lo, chunks, c) : make_uint4(0, 0, 0, 0);
      raw[u][1] = hi_ok ? weights.load(n_hi, chunks, c) : make_uint4(0, 0, 0, 0);
      scale[u][0] = lo_ok ? weights.chunk_scale(n_lo, K, c) : 0.0f;
      scale[u][1] = hi_ok ? weights.chunk_scale(n_hi, K, c) : 0.0f;
    }
  };
  // (Not with 8 m-tiles: their accumulators leave no registers to hold the batch across the wait: ptxas spills.)
  constexpr bool kEarlyBatch = kMTiles <= 4;
  const int first_tile = blockIdx.x;
  if (kEarlyBatch && first_tile < tiles) load_batch(first_tile * kMmaTileN + g, warp);
  const scalar_t* residual = fusion.residual;
  wait_for_previous_kernels(A, residual);

  // The rows the mmas read: A itself, or its normed rows, staged.
  const scalar_t* input = A;
  int64_t input_stride = K;
  if constexpr (kInput != MmaInput::plain) {
    __syncthreads();  // the norm's vectors are in shared memory
    if (warp < rows) {
      stage_normed_row<kInput>(A + static_cast<int64_t>(warp) * K, K, fusion.norm_eps, norm_vectors,
                               staged + warp * staged_stride);
    }
    __syncthreads();
    if (fusion.normed_out != nullptr) {  // this CTA's share of the normed rows, in 16-byte pieces
      constexpr int kPer = kPerChunk<scalar_t>;
      const int row_chunks = K / kPer, total = rows * row_chunks;
      const int share = (total + gridDim.x - 1) / gridDim.x;
      for (int i = blockIdx.x * share + threadIdx.x; i < min(total, (blockIdx.x + 1) * share); i += kMmaThreads) {
        const int m = i / row_chunks, c = i % row_chunks;
        reinterpret_cast<uint4*>(fusion.normed_out + static_cast<int64_t>(m) * K)[c] =
            reinterpret_cast<const uint4*>(staged + m * staged_stride)[c];
      }
    }
    input = staged;
    input_stride = staged_stride;
  }

  for (int tile = blockIdx.x; tile < tiles; tile += gridDim.x) {
    const int n_lo = tile * kMmaTileN + g;
    float acc[kMTiles][4];
#pragma unroll
    for (int mt = 0; mt < kMTiles; ++mt) acc[mt][0] = acc[mt][1] = acc[mt][2] = acc[mt][3] = 0.0f;

    for (int first = warp; first < steps; first += kMmaWarps * kMmaUnroll) {
      if (!kEarlyBatch || tile != first_tile || first != warp) load_batch(n_lo, first);
#pragma unroll
      for (int u = 0; u < kMmaUnroll; ++u) {
        const int step = first + u * kMmaWarps;
        if (step >= steps) break;  // uniform across the warp, as mma.sync needs
        const int c = step * kMmaChunksPerStep + t;
        uint32_t lo_row_g[kPairs], hi_row_g[kPairs], lo_row_g8[kPairs], hi_row_g8[kPairs];
        weights.decode(smem, raw[u][0], scale[u][0], lo_row_g, hi_row_g);
        weights.decode(smem, raw[u][1], scale[u][1], lo_row_g8, hi_row_g8);
#pragma unroll
        for (int mt = 0; mt < kMTiles; ++mt) {
          if (mt * kMmaTileM >= rows) break;  // uniform
          const int m = mt * kMmaTileM + g;
          uint4 act[kActLoads];
#pragma unroll
          for (int i = 0; i < kActLoads; ++i) {
            act[i] = (m < rows && c < chunks)
                         ? *(reinterpret_cast<const uint4*>(input + m * input_stride + c * kK) + i)
                         : make_uint4(0, 0, 0, 0);
          }
          const uint32_t* act_words = reinterpret_cast<const uint32_t*>(act);
#pragma unroll
          for (int j = 0; j < kPairs; ++j) {
            const uint32_t a[4] = {lo_row_g[j], lo_row_g8[j], hi_row_g[j], hi_row_g8[j]};
            Ops::mma(acc[mt], a, act_words[2 * j], act_words[2 * j + 1]);
          }
        }
      }
    }

    // acc[mt]: (n = g, m = 2t), (g, 2t + 1), (g + 8, 2t), (g + 8, 2t + 1) of m-tile mt.
#pragma unroll
    for (int mt = 0; mt < kMTiles; ++mt) {
      float* mine = partial + (warp * kRowsPadded + mt * kMmaTileM + 2 * t) * kMmaTileN;
      mine[g] = acc[mt][0];
      mine[kMmaTileN + g] = acc[mt][1];
      mine[g + 8] = acc[mt][2];
      mine[kMmaTileN + g + 8] = acc[mt][3];
    }
    __syncthreads();
    for (int i = threadIdx.x; i < kRowsPadded * kMmaTileN; i += kMmaThreads) {
      const int m = i / kMmaTileN, n = tile * kMmaTileN + i % kMmaTileN;
      if (m < rows && n < N) {
        float sum = 0.0f;
#pragma unroll
        for (int w = 0; w < kMmaWarps; ++w) sum += partial[w * kRowsPadded * kMmaTileN + i];
        sum *= weights.row_scale(n);
        if (bias != nullptr) sum += static_cast<float>(bias[n]);
        if (fusion.gelu) sum = gelu_of_rounded<scalar_t>(sum);
        const int64_t index = static_cast<int64_t>(m) * N + n;
        if (residual != nullptr) sum = static_cast<float>(residual[index]) + rounded<scalar_t>(sum);
        out[index] = static_cast<scalar_t>(sum);
      }
    }
    __syncthreads();  // partial is rewritten by the next tile
  }
#endif
}

// Whether the tensor-core GEMV takes the problem: float16/bfloat16 A with at most max_rows (<= kMaxMmaRows)
// rows, whole 16-byte chunks per weight row, 16-byte aligned weights and A, an sm_80+ device, int-sized indices.
inline bool mma_gemv_applies(const at::Tensor& A, int64_t rows, int64_t max_rows, int64_t N, int64_t K,
                             int weights_per_chunk, const void* weights) {
  if (A.scalar_type() != at::kHalf && A.scalar_type() != at::kBFloat16) return false;
  if (rows > std::min(max_rows, kMaxMmaRows) || K % weights_per_chunk != 0 || !is_aligned_16(weights) || !is_aligned_16(A.data_ptr())) {
    return false;
  }
  if (N >= (int64_t{1} << 30) || K >= (int64_t{1} << 30)) return false;
  return at::cuda::getCurrentDeviceProperties()->major >= 8;
}

// Whether the GEMV can norm its input A itself (mma_gemv_applies holding too): a norm asked for, at most one row
// per warp, K up to kMaxMmaStagedK, contiguous 16-byte aligned norm vectors and normed_out (A's dtype: 16 bytes
// are 8 values), and normed_out apart from A (CTAs write it while others still read A; the composition copies).
inline bool mma_norm_applies(const at::Tensor& A, int64_t rows, int64_t K, const GemmFusion& fusion) {
  if (!fusion.norm_weight || rows > kMmaWarps || K > kMaxMmaStagedK) return false;
  if (fusion.normed_out && fusion.normed_out->is_alias_of(A)) return false;
  const auto aligned = [](const std::optional<at::Tensor>& t) {
    return !t || (t->is_contiguous() && is_aligned_16(t->data_ptr()));
  };
  return aligned(fusion.norm_weight) && aligned(fusion.norm_bias) && aligned(fusion.normed_out);
}

template <typename Weights, typename scalar_t, int kMTiles, MmaInput kInput>
void launch_mma_gemv_tiles(const at::Tensor& A, int64_t rows, const Weights& weights, int64_t N, int64_t K,
                           const scalar_t* bias, const MmaFusion<scalar_t>& fusion, at::Tensor& out) {
  constexpr int kPartialBytes = kMmaWarps * kMTiles * kMmaTileM * kMmaTileN * sizeof(float);
  // A staged input's instantiation reserves room for the widest one (kMmaWarps rows, then the norm's weight and
  // bias), so the grid below fits every launch.
  constexpr int kStagedBytes =
      kInput == MmaInput::plain
          ? 0
          : (kMmaWarps * (kMaxMmaStagedK + 32) + 2 * kMaxMmaStagedK) * static_cast<int>(sizeof(scalar_t));
  constexpr int kSharedBytes = Weights::kSharedBytes + kPartialBytes + kStagedBytes;
  // The persistent grid: one wave (the CTAs an SM holds with the widest launch's shared memory).
  constexpr auto kernel = &mma_gemv_kernel<Weights, scalar_t, kMTiles, kInput>;
  const int ctas_per_sm = resident_ctas_per_sm<kernel>(kMmaThreads, kSharedBytes);
  const int64_t tiles = (N + kMmaTileN - 1) / kMmaTileN;
  const int64_t ctas =
      std::min<int64_t>(tiles, int64_t{ctas_per_sm} * at::cuda::getCurrentDeviceProperties()->multiProcessorCount);
  // The launch asks only for the shared memory this K needs.
  const int shared_bytes =
      Weights::kSharedBytes + kPartialBytes +
      (kInput == MmaInput::plain ? 0 : static_cast<int>((kMmaWarps * mma_staged_stride(K) + 2 * K) * sizeof(scalar_t)));
  launch_overlapped(kernel, dim3(static_cast<unsigned>(ctas)), dim3(kMmaThreads), shared_bytes, A.data_ptr<scalar_t>(),
                    static_cast<int>(rows), weights, static_cast<int>(N), static_cast<int>(K), bias, fusion,
                    out.data_ptr<scalar_t>(), static_cast<int>(tiles));
}

// out [rows, N] = A [rows, K] (contiguous float16/bfloat16, rows <= kMaxMmaRows) times the weights, plus bias,
// with the fusion's epilogue (gelu, residual of out's shape) and, where mma_norm_applies held, its input norm
// (else the caller passes the composed input and epilogue_of(fusion)). MakeWeights::make<scalar_t>() builds the
// format's decoder for A's dtype. The m-tile count is the smallest of 1, 2, 4, 8 that holds `rows`.
template <typename MakeWeights>
void launch_mma_gemv(const at::Tensor& A, int64_t rows, const MakeWeights& make_weights, int64_t N, int64_t K,
                     const std::optional<at::Tensor>& bias, const GemmFusion& fusion, at::Tensor& out) {
  if (rows == 0 || N == 0) return;
  const at::Tensor bias_values = bias ? bias->contiguous() : at::Tensor();
  const at::Tensor residual_values = fusion.residual ? fusion.residual->contiguous() : at::Tensor();
  AT_DISPATCH_REDUCED_FLOATING_TYPES(A.scalar_type(), "mma_gemv", [&] {
    const auto weights = make_weights.template make<scalar_t>();
    const scalar_t* bias_ptr = bias ? bias_values.data_ptr<scalar_t>() : nullptr;
    const auto pointer = [](const std::optional<at::Tensor>& t) { return t ? t->data_ptr<scalar_t>() : nullptr; };
    MmaFusion<scalar_t> args;
    args.norm_weight = pointer(fusion.norm_weight);
    args.norm_bias = pointer(fusion.norm_bias);
    args.norm_eps = static_cast<float>(fusion.norm_eps);
    args.normed_out = pointer(fusion.normed_out);
    args.residual = fusion.residual ? residual_values.data_ptr<scalar_t>() : nullptr;
    args.gelu = fusion.gelu;
    using W = decltype(weights);
    if (fusion.norm_weight) {
      TORCH_INTERNAL_ASSERT(mma_norm_applies(A, rows, K, fusion), "mma_gemv: a staged norm the kernel cannot take");
      if (fusion.norm_bias) {
        launch_mma_gemv_tiles<W, scalar_t, 1, MmaInput::layer_norm>(A, rows, weights, N, K, bias_ptr, args, out);
      } else {
        launch_mma_gemv_tiles<W, scalar_t, 1, MmaInput::rms_norm>(A, rows, weights, N, K, bias_ptr, args, out);
      }
      return;
    }
    static_assert(kMaxMmaRows == 8 * kMmaTileM, "add an m-tile count for the new kMaxMmaRows");
    if (rows <= kMmaTileM) {
      launch_mma_gemv_tiles<W, scalar_t, 1, MmaInput::plain>(A, rows, weights, N, K, bias_ptr, args, out);
    } else if (rows <= 2 * kMmaTileM) {
      launch_mma_gemv_tiles<W, scalar_t, 2, MmaInput::plain>(A, rows, weights, N, K, bias_ptr, args, out);
    } else if (rows <= 4 * kMmaTileM) {
      launch_mma_gemv_tiles<W, scalar_t, 4, MmaInput::plain>(A, rows, weights, N, K, bias_ptr, args, out);
    } else {
      launch_mma_gemv_tiles<W, scalar_t, 8, MmaInput::plain>(A, rows, weights, N, K, bias_ptr, args, out);
    }
  });
}

}  // namespace imagetotext::ops::cuda
