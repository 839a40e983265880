// Experiment (standalone, not part of the build): where the NF4 / INT8 M = 1 GEMV loses bandwidth on the
// H100, and which kernel shapes recover it. Each variant reimplements the library's tensor-core GEMV
// (src/ops/cuda/gemv_mma.cuh) or SIMT GEMV (gemv.cuh) for M = 1, bf16, with one change; outputs are checked
// against a float64 reference. Build and run on the GPU machine:
//   nvcc -O3 -std=c++17 -arch=sm_90a -o nf4_gemv_probe nf4_gemv_probe.cu && ./nf4_gemv_probe 14336 4096
// Results and conclusions: benchmarks/results/nf4-gemv-probe-h100-2026-11-22.md
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cmath>
#include <vector>
#include <functional>
#include <string>

#define CK(x) do { cudaError_t e = (x); if (e != cudaSuccess) { printf("CUDA %s at %d: %s\n", #x, __LINE__, cudaGetErrorString(e)); exit(1);} } while (0)

constexpr int kWarp = 32;

__device__ __forceinline__ uint32_t bf16x2_mul(uint32_t a, uint32_t b) {
  uint32_t r;
  asm("fma.rn.bf16x2 %0, %1, %2, %3;\n" : "=r"(r) : "r"(a), "r"(b), "r"(0x80008000u));
  return r;
}
__device__ __forceinline__ void mma_bf16(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
__device__ __forceinline__ float warp_sum(float v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
__device__ __forceinline__ uint16_t bf16_bits(float v) { return __bfloat16_as_ushort(__float2bfloat16_rn(v)); }

struct Nf4 {
  const uint8_t* packed;
  const float* absmax;          // float per block of 64
  const uint8_t* absmax_q;      // nested: uint8 per block
  const float* nested_code;     // 256
  const float* nested_absmax;   // per 256 blocks
  float offset;
  const float* codes;           // 16
};

// scale modes: 0 float absmax, 1 none, 2 nested
template <int kScaleMode>
__device__ __forceinline__ float block_scale(const Nf4& w, int64_t block, const float* shared_nested_code) {
  if constexpr (kScaleMode == 0) return __ldg(w.absmax + block);
  else if constexpr (kScaleMode == 1) return 1.0f;
  else return __fadd_rn(__fmul_rn(shared_nested_code[__ldg(w.absmax_q + block)], __ldg(w.nested_absmax + (block >> 8))), w.offset);
}

// ---------------------------------------------------------------------------------------------------------
// floor: stream-read every byte once
__global__ void read_floor(const uint4* __restrict__ p, int64_t n, uint32_t* out) {
  uint32_t acc = 0;
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
    uint4 v = __ldcs(p + i);
    acc ^= v.x ^ v.y ^ v.z ^ v.w;
  }
  if (acc == 0x12345678u) out[0] = acc;
}
template <int U>
__global__ void read_floor_unrolled(const uint4* __restrict__ p, int64_t n, uint32_t* out) {
  uint32_t acc = 0;
  const int64_t stride = (int64_t)gridDim.x * blockDim.x;
  int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
  for (; i + (U - 1) * stride < n; i += U * stride) {
    uint4 v[U];
#pragma unroll
    for (int u = 0; u < U; ++u) v[u] = __ldcs(p + i + u * stride);
#pragma unroll
    for (int u = 0; u < U; ++u) acc ^= v[u].x ^ v[u].y ^ v[u].z ^ v[u].w;
  }
  for (; i < n; i += stride) { uint4 v = __ldcs(p + i); acc ^= v.x ^ v.y ^ v.z ^ v.w; }
  if (acc == 0x12345678u) out[0] = acc;
}

// ---------------------------------------------------------------------------------------------------------
// The repo's tensor-core GEMV, M = 1 (one m-tile), bf16, parameterized.
template <int kWarps, int kUnroll, int kScaleMode, int kDecodeRaw>
__global__ void __launch_bounds__(kWarps * 32, 2)
    nf4_mma(const __nv_bfloat16* __restrict__ A, Nf4 w, int N, int K, __nv_bfloat16* __restrict__ out, int tiles) {
  constexpr int kK = 32, kPairs = 8, kActLoads = 4, kThreads = kWarps * 32;
  extern __shared__ uint4 shared_words[];
  char* smem = reinterpret_cast<char*>(shared_words);
  float* partial = reinterpret_cast<float*>(smem + 256 * 32 * 4);
  float* nested_code = partial + kWarps * 8 * 16;
  __shared__ uint16_t values[16];
  if (threadIdx.x < 16) values[threadIdx.x] = bf16_bits(w.codes[threadIdx.x]);
  if (kScaleMode == 2) for (int i = threadIdx.x; i < 256; i += kThreads) nested_code[i] = w.nested_code[i];
  __syncthreads();
  uint4* table = reinterpret_cast<uint4*>(smem);
  for (int i = threadIdx.x; i < 256 * 32 / 4; i += kThreads) {
    const int byte = i / 8;
    const uint32_t pair = values[byte >> 4] | (uint32_t(values[byte & 15]) << 16);
    table[i] = make_uint4(pair, pair, pair, pair);
  }
  __syncthreads();
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  const int chunks = K / kK;
  const int steps = (chunks + 3) / 4;
  const uint32_t lane_offset = lane * 4;
  for (int tile = blockIdx.x; tile < tiles; tile += gridDim.x) {
    const int n_lo = tile * 16 + g, n_hi = n_lo + 8;
    float acc[4] = {0, 0, 0, 0};
    for (int first = warp; first < steps; first += kWarps * kUnroll) {
      uint4 raw[kUnroll][2];
      float scale[kUnroll][2];
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        const int c = (first + u * kWarps) * 4 + t;
        const bool ok = c < chunks;
        raw[u][0] = ok ? __ldcs(reinterpret_cast<const uint4*>(w.packed) + (int64_t)n_lo * chunks + c) : make_uint4(0, 0, 0, 0);
        raw[u][1] = ok ? __ldcs(reinterpret_cast<const uint4*>(w.packed) + (int64_t)n_hi * chunks + c) : make_uint4(0, 0, 0, 0);
        scale[u][0] = ok ? block_scale<kScaleMode>(w, ((int64_t)n_lo * K + c * kK) >> 6, nested_code) : 0.f;
        scale[u][1] = ok ? block_scale<kScaleMode>(w, ((int64_t)n_hi * K + c * kK) >> 6, nested_code) : 0.f;
      }
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        const int step = first + u * kWarps;
        if (step >= steps) break;
        const int c = step * 4 + t;
        uint32_t lo[2][kPairs], hi[2][kPairs];
#pragma unroll
        for (int r = 0; r < 2; ++r) {
          const uint32_t words[4] = {raw[u][r].x, raw[u][r].y, raw[u][r].z, raw[u][r].w};
          const uint32_t scale2 = uint32_t(bf16_bits(scale[u][r])) * 0x10001u;
#pragma unroll
          for (int j = 0; j < kPairs; ++j) {
            if constexpr (kDecodeRaw) {
              lo[r][j] = bf16x2_mul(words[j / 2] & 0x3f7f3f7fu, scale2);
              hi[r][j] = bf16x2_mul((words[j / 2] >> 1) & 0x3f7f3f7fu, scale2);
            } else {
              const uint32_t word = words[j / 2];
              const int p0 = 2 * (j % 2), p1 = p0 + 1;
              const uint32_t s0 = p0 == 0 ? word << 7 : word >> (8 * p0 - 7);
              const uint32_t s1 = word >> (8 * p1 - 7);
              lo[r][j] = bf16x2_mul(*reinterpret_cast<const uint32_t*>(smem + ((s0 & 0x7F80u) | lane_offset)), scale2);
              hi[r][j] = bf16x2_mul(*reinterpret_cast<const uint32_t*>(smem + ((s1 & 0x7F80u) | lane_offset)), scale2);
            }
          }
        }
        uint4 act[kActLoads];
#pragma unroll
        for (int i = 0; i < kActLoads; ++i)
          act[i] = (g == 0 && c < chunks) ? __ldg(reinterpret_cast<const uint4*>(A + c * kK) + i) : make_uint4(0, 0, 0, 0);
        const uint32_t* aw = reinterpret_cast<const uint32_t*>(act);
#pragma unroll
        for (int j = 0; j < kPairs; ++j) {
          const uint32_t a[4] = {lo[0][j], lo[1][j], hi[0][j], hi[1][j]};
          mma_bf16(acc, a, aw[2 * j], aw[2 * j + 1]);
        }
      }
    }
    // acc[0]: (n = g, m = 2t), acc[2]: (g + 8, 2t); only m = 0 (t == 0) matters
    if (t == 0) {
      partial[warp * 16 + g] = acc[0];
      partial[warp * 16 + g + 8] = acc[2];
    }
    __syncthreads();
    if (threadIdx.x < 16) {
      float s = 0;
      for (int ww = 0; ww < kWarps; ++ww) s += partial[ww * 16 + threadIdx.x];
      const int n = tile * 16 + threadIdx.x;
      if (n < N) out[n] = __float2bfloat16_rn(s);
    }
    __syncthreads();
  }
}

// ---------------------------------------------------------------------------------------------------------
// SIMT: a warp owns kRows rows; lane l streams chunk l, l+32, ... of each (512 contiguous bytes per row per
// load); the activations of a chunk are loaded once and used for all kRows rows. Byte -> bf16 pair LUT
// (conflict-free replicated table), pairs widened to float, float FMAs, the block scale on the chunk's dot.
template <int kWarps, int kRows, int kUnroll, int kScaleMode>
__global__ void __launch_bounds__(kWarps * 32)
    nf4_simt(const __nv_bfloat16* __restrict__ A, Nf4 w, int N, int K, __nv_bfloat16* __restrict__ out) {
  constexpr int kThreads = kWarps * 32;
  extern __shared__ uint4 shared_words[];
  char* smem = reinterpret_cast<char*>(shared_words);
  float* nested_code = reinterpret_cast<float*>(smem + 256 * 32 * 4);
  __shared__ uint16_t values[16];
  if (threadIdx.x < 16) values[threadIdx.x] = bf16_bits(w.codes[threadIdx.x]);
  if (kScaleMode == 2) for (int i = threadIdx.x; i < 256; i += kThreads) nested_code[i] = w.nested_code[i];
  __syncthreads();
  uint4* table = reinterpret_cast<uint4*>(smem);
  for (int i = threadIdx.x; i < 256 * 32 / 4; i += kThreads) {
    const int byte = i / 8;
    const uint32_t pair = values[byte >> 4] | (uint32_t(values[byte & 15]) << 16);
    table[i] = make_uint4(pair, pair, pair, pair);
  }
  __syncthreads();
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const uint32_t lane_offset = lane * 4;
  const int chunks = K / 32;
  const int64_t n0 = (blockIdx.x * (int64_t)kWarps + warp) * kRows;
  if (n0 >= N) return;
  float acc[kRows] = {};
  for (int first = lane; first < chunks; first += 32 * kUnroll) {
    uint4 raw[kUnroll][kRows];
    float scale[kUnroll][kRows];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int c = first + u * 32;
#pragma unroll
      for (int r = 0; r < kRows; ++r) {
        const bool ok = c < chunks && n0 + r < N;
        raw[u][r] = ok ? __ldcs(reinterpret_cast<const uint4*>(w.packed) + (n0 + r) * chunks + c) : make_uint4(0, 0, 0, 0);
        scale[u][r] = ok ? block_scale<kScaleMode>(w, ((n0 + r) * K + c * 32) >> 6, nested_code) : 0.f;
      }
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int c = first + u * 32;
      if (c >= chunks) break;
      uint4 act[4];
#pragma unroll
      for (int i = 0; i < 4; ++i) act[i] = __ldg(reinterpret_cast<const uint4*>(A + c * 32) + i);
      const uint32_t* aw = reinterpret_cast<const uint32_t*>(act);
#pragma unroll
      for (int r = 0; r < kRows; ++r) {
        const uint32_t words[4] = {raw[u][r].x, raw[u][r].y, raw[u][r].z, raw[u][r].w};
        float dot0 = 0.f, dot1 = 0.f;
#pragma unroll
        for (int b = 0; b < 16; ++b) {
          const uint32_t word = words[b / 4];
          const int p = b % 4;
          const uint32_t s = p == 0 ? word << 7 : word >> (8 * p - 7);
          const uint32_t pair = *reinterpret_cast<const uint32_t*>(smem + ((s & 0x7F80u) | lane_offset));
          const uint32_t a = aw[b];
          dot0 = fmaf(__uint_as_float(pair << 16), __uint_as_float(a << 16), dot0);
          dot1 = fmaf(__uint_as_float(pair & 0xFFFF0000u), __uint_as_float(a & 0xFFFF0000u), dot1);
        }
        acc[r] = fmaf(dot0 + dot1, scale[u][r], acc[r]);
      }
    }
  }
#pragma unroll
  for (int r = 0; r < kRows; ++r) {
    const float s = warp_sum(acc[r]);
    if (lane == 0 && n0 + r < N) out[n0 + r] = __float2bfloat16_rn(s);
  }
}

// ---------------------------------------------------------------------------------------------------------
// INT8 weight-only SIMT (the repo's, M = 1), parameterized; plus a multi-row variant.
template <int kWarps, int kRows, int kUnroll>
__global__ void __launch_bounds__(kWarps * 32)
    int8_simt(const __nv_bfloat16* __restrict__ A, const int8_t* __restrict__ cb, const float* __restrict__ scb, int N,
              int K, __nv_bfloat16* __restrict__ out) {
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int chunks = K / 16;
  const int64_t n0 = (blockIdx.x * (int64_t)kWarps + warp) * kRows;
  if (n0 >= N) return;
  float acc[kRows] = {};
  for (int first = lane; first < chunks; first += 32 * kUnroll) {
    uint4 raw[kUnroll][kRows];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int c = first + u * 32;
#pragma unroll
      for (int r = 0; r < kRows; ++r)
        raw[u][r] = (c < chunks && n0 + r < N) ? __ldcs(reinterpret_cast<const uint4*>(cb) + (n0 + r) * chunks + c) : make_uint4(0, 0, 0, 0);
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int c = first + u * 32;
      if (c >= chunks) break;
      uint4 act[2];
      act[0] = __ldg(reinterpret_cast<const uint4*>(A + c * 16));
      act[1] = __ldg(reinterpret_cast<const uint4*>(A + c * 16) + 1);
      const uint32_t* aw = reinterpret_cast<const uint32_t*>(act);
#pragma unroll
      for (int r = 0; r < kRows; ++r) {
        const uint32_t words[4] = {raw[u][r].x, raw[u][r].y, raw[u][r].z, raw[u][r].w};
        float dot = 0.f;
#pragma unroll
        for (int j = 0; j < 4; ++j) {
          const uint32_t off = words[j] ^ 0x80808080u;
#pragma unroll
          for (int b = 0; b < 4; ++b) {
            const float wv = __uint_as_float(__byte_perm(off, 0x4B000000u, 0x7440u + b)) - 8388736.0f;
            const uint32_t a = aw[(4 * j + b) / 2];
            const float av = ((4 * j + b) % 2 == 0) ? __uint_as_float(a << 16) : __uint_as_float(a & 0xFFFF0000u);
            dot = fmaf(wv, av, dot);
          }
        }
        acc[r] += dot;
      }
    }
  }
#pragma unroll
  for (int r = 0; r < kRows; ++r) {
    const float s = warp_sum(acc[r]);
    if (lane == 0 && n0 + r < N) out[n0 + r] = __float2bfloat16_rn(s * __ldg(scb + n0 + r) / 127.f);
  }
}


// ---------------------------------------------------------------------------------------------------------
// Ring: weights staged through shared memory with cp.async (kStages deep, coalesced 16-byte copies, a warp
// copies 512 contiguous bytes of one row), then the tensor-core decode + mma from shared memory.
__device__ __forceinline__ void cp_async16(void* smem, const void* gmem) {
  const uint32_t s = static_cast<uint32_t>(__cvta_generic_to_shared(smem));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(s), "l"(gmem));
}
__device__ __forceinline__ void cp_async4(void* smem, const void* gmem) {
  const uint32_t s = static_cast<uint32_t>(__cvta_generic_to_shared(smem));
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4;\n" ::"r"(s), "l"(gmem));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n"); }
template <int kPending>
__device__ __forceinline__ void cp_async_wait() { asm volatile("cp.async.wait_group %0;\n" ::"n"(kPending)); }

__device__ __forceinline__ void int8_pairs(uint32_t word, uint32_t& lo, uint32_t& hi) {
  const uint32_t offset_bytes = word ^ 0x80808080u;
  uint32_t f[4];
#pragma unroll
  for (int b = 0; b < 4; ++b)
    f[b] = __float_as_uint(__uint_as_float(__byte_perm(offset_bytes, 0x4B000000u, 0x7540u + b)) - 8388736.0f);
  lo = __byte_perm(f[0], f[1], 0x7632u);
  hi = __byte_perm(f[2], f[3], 0x7632u);
}

template <int kStageBytes>
constexpr int kRowStride = kStageBytes + 64;  // 16 rows land in distinct banks for 16-byte reads
constexpr int kScalesPerRow = 36;

// kInt8: 0 = NF4 (float absmax), 1 = INT8 (row scale)
template <int kWarps, int kStages, int kStageBytes, int kInt8>
__global__ void __launch_bounds__(kWarps * 32)
    ring_gemv(const __nv_bfloat16* __restrict__ A, Nf4 w, const int8_t* __restrict__ cb, const float* __restrict__ scb,
              int N, int K, __nv_bfloat16* __restrict__ out, int tiles) {
  constexpr int kThreads = kWarps * 32;
  constexpr int kK = kInt8 ? 16 : 32;                  // weights per 16-byte chunk
  constexpr int kChunksPerStage = kStageBytes / 16;
  constexpr int kSteps = kChunksPerStage / 4;
  constexpr int kTableBytes = kInt8 ? 0 : 256 * 32 * 4;
  extern __shared__ uint4 shared_words[];
  char* smem = reinterpret_cast<char*>(shared_words);
  char* ring = smem + kTableBytes;
  float* scales = reinterpret_cast<float*>(ring + kStages * 16 * kRowStride<kStageBytes>);
  int* first_block = reinterpret_cast<int*>(scales + kStages * 16 * kScalesPerRow);   // [stage][row] (int: fine here)
  float* partial = reinterpret_cast<float*>(first_block + kStages * 16);

  const int row_bytes = kInt8 ? K : K / 2;
  const int chunks = K / kK;
  const int slices = (row_bytes + kStageBytes - 1) / kStageBytes;
  const int my_tiles = blockIdx.x < tiles ? (tiles - blockIdx.x + gridDim.x - 1) / gridDim.x : 0;
  const int items = my_tiles * slices;
  const uint8_t* bytes = kInt8 ? reinterpret_cast<const uint8_t*>(cb) : w.packed;

  auto issue = [&](int item) {
    if (item < items) {
      const int stage = item % kStages;
      const int tile = blockIdx.x + (item / slices) * gridDim.x, slice = item % slices;
      for (int i = threadIdx.x; i < 16 * kChunksPerStage; i += kThreads) {
        const int r = i / kChunksPerStage, col = i % kChunksPerStage;
        const int n = tile * 16 + r, offset = slice * kStageBytes + col * 16;
        if (n < N && offset < row_bytes)
          cp_async16(ring + (stage * 16 + r) * kRowStride<kStageBytes> + col * 16, bytes + (int64_t)n * row_bytes + offset);
      }
      if (!kInt8) {
        for (int i = threadIdx.x; i < 16 * kScalesPerRow; i += kThreads) {
          const int r = i / kScalesPerRow, j = i % kScalesPerRow;
          const int n = tile * 16 + r;
          const int64_t first = ((int64_t)n * K + (int64_t)slice * kStageBytes * 2) >> 6;
          const int64_t last = ((int64_t)n * K + min((int64_t)(slice + 1) * kStageBytes * 2, (int64_t)K) - 1) >> 6;
          if (j == 0) first_block[stage * 16 + r] = (int)first;  // plain store: read after the barrier
          if (n < N && first + j <= last) cp_async4(scales + (stage * 16 + r) * kScalesPerRow + j, w.absmax + first + j);
        }
      }
    }
    cp_async_commit();
  };

#pragma unroll
  for (int s = 0; s < kStages - 1; ++s) issue(s);

  if (!kInt8) {  // the table, while the first stages fly
    __shared__ uint16_t values[16];
    if (threadIdx.x < 16) values[threadIdx.x] = bf16_bits(w.codes[threadIdx.x]);
    __syncthreads();
    uint4* table = reinterpret_cast<uint4*>(smem);
    for (int i = threadIdx.x; i < 256 * 32 / 4; i += kThreads) {
      const int byte = i / 8;
      const uint32_t pair = values[byte >> 4] | (uint32_t(values[byte & 15]) << 16);
      table[i] = make_uint4(pair, pair, pair, pair);
    }
  }

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  const uint32_t lane_offset = lane * 4;
  float acc[4] = {0, 0, 0, 0};
  for (int item = 0; item < items; ++item) {
    cp_async_wait<kStages - 2>();
    __syncthreads();
    issue(item + kStages - 1);
    const int stage = item % kStages;
    const int tile = blockIdx.x + (item / slices) * gridDim.x, slice = item % slices;
    const char* rows = ring + stage * 16 * kRowStride<kStageBytes>;
#pragma unroll
    for (int step = warp; step < kSteps; step += kWarps) {
      const int cl = step * 4 + t;
      const int c = slice * kChunksPerStage + cl;
      if (slice * kChunksPerStage + step * 4 >= chunks) break;  // the step is past the row's end: uniform
      const uint4 raw_lo = *reinterpret_cast<const uint4*>(rows + g * kRowStride<kStageBytes> + cl * 16);
      const uint4 raw_hi = *reinterpret_cast<const uint4*>(rows + (g + 8) * kRowStride<kStageBytes> + cl * 16);
      constexpr int kPairs = kK / 4;
      uint32_t lo[2][kPairs], hi[2][kPairs];
      const bool ok = c < chunks;
      if constexpr (kInt8) {
        const uint32_t wl[4] = {raw_lo.x, raw_lo.y, raw_lo.z, raw_lo.w}, wh[4] = {raw_hi.x, raw_hi.y, raw_hi.z, raw_hi.w};
#pragma unroll
        for (int j = 0; j < kPairs; ++j) {
          int8_pairs(ok ? wl[j] : 0u, lo[0][j], hi[0][j]);
          int8_pairs(ok ? wh[j] : 0u, lo[1][j], hi[1][j]);
        }
      } else {
        const float* st = scales + stage * 16 * kScalesPerRow;
        const int n_lo = tile * 16 + g;
        const int b_lo = (int)((((int64_t)n_lo * K + c * kK) >> 6) - first_block[stage * 16 + g]);
        const int b_hi = (int)((((int64_t)(n_lo + 8) * K + c * kK) >> 6) - first_block[stage * 16 + g + 8]);
        const float s_lo = ok && n_lo < N ? st[g * kScalesPerRow + b_lo] : 0.f;
        const float s_hi = ok && n_lo + 8 < N ? st[(g + 8) * kScalesPerRow + b_hi] : 0.f;
#pragma unroll
        for (int r = 0; r < 2; ++r) {
          const uint4 raw = r ? raw_hi : raw_lo;
          const uint32_t words[4] = {raw.x, raw.y, raw.z, raw.w};
          const uint32_t scale2 = uint32_t(bf16_bits(r ? s_hi : s_lo)) * 0x10001u;
#pragma unroll
          for (int j = 0; j < kPairs; ++j) {
            const uint32_t word = words[j / 2];
            const int p0 = 2 * (j % 2), p1 = p0 + 1;
            const uint32_t s0 = p0 == 0 ? word << 7 : word >> (8 * p0 - 7);
            const uint32_t s1 = word >> (8 * p1 - 7);
            lo[r][j] = bf16x2_mul(*reinterpret_cast<const uint32_t*>(smem + ((s0 & 0x7F80u) | lane_offset)), scale2);
            hi[r][j] = bf16x2_mul(*reinterpret_cast<const uint32_t*>(smem + ((s1 & 0x7F80u) | lane_offset)), scale2);
          }
        }
      }
      constexpr int kActLoads = kK * 2 / 16;
      uint4 act[kActLoads];
#pragma unroll
      for (int i = 0; i < kActLoads; ++i)
        act[i] = (g == 0 && ok) ? __ldg(reinterpret_cast<const uint4*>(A + c * kK) + i) : make_uint4(0, 0, 0, 0);
      const uint32_t* aw = reinterpret_cast<const uint32_t*>(act);
#pragma unroll
      for (int j = 0; j < kPairs; ++j) {
        const uint32_t a[4] = {lo[0][j], lo[1][j], hi[0][j], hi[1][j]};
        mma_bf16(acc, a, aw[2 * j], aw[2 * j + 1]);
      }
    }
    if (slice == slices - 1) {  // the tile's last stage: reduce over warps
      if (t == 0) {
        partial[warp * 16 + g] = acc[0];
        partial[warp * 16 + g + 8] = acc[2];
      }
      acc[0] = acc[1] = acc[2] = acc[3] = 0.f;
      __syncthreads();
      if (threadIdx.x < 16) {
        float s = 0;
        for (int ww = 0; ww < kWarps; ++ww) s += partial[ww * 16 + threadIdx.x];
        const int n = tile * 16 + threadIdx.x;
        if (kInt8 && n < N) s *= __ldg(scb + n) / 127.f;
        if (n < N) out[n] = __float2bfloat16_rn(s);
      }
    }
  }
  cp_async_wait<0>();
}


// ---------------------------------------------------------------------------------------------------------
// The tensor-core GEMV with its loads flattened over (tile, iteration) units and the next unit's loads issued
// before the current unit is decoded: no drain at tile ends.
template <int kWarps, int kUnroll, int kMinBlocks>
__global__ void __launch_bounds__(kWarps * 32, kMinBlocks)
    nf4_pipe(const __nv_bfloat16* __restrict__ A, Nf4 w, int N, int K, __nv_bfloat16* __restrict__ out, int tiles) {
  constexpr int kK = 32, kPairs = 8, kActLoads = 4, kThreads = kWarps * 32;
  extern __shared__ uint4 shared_words[];
  char* smem = reinterpret_cast<char*>(shared_words);
  float* partial = reinterpret_cast<float*>(smem + 256 * 32 * 4);
  __shared__ uint16_t values[16];
  if (threadIdx.x < 16) values[threadIdx.x] = bf16_bits(w.codes[threadIdx.x]);
  __syncthreads();
  uint4* table = reinterpret_cast<uint4*>(smem);
  for (int i = threadIdx.x; i < 256 * 32 / 4; i += kThreads) {
    const int byte = i / 8;
    const uint32_t pair = values[byte >> 4] | (uint32_t(values[byte & 15]) << 16);
    table[i] = make_uint4(pair, pair, pair, pair);
  }
  __syncthreads();
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  const int chunks = K / kK;
  const int steps = (chunks + 3) / 4;
  const int per_tile = (steps + kWarps * kUnroll - 1) / (kWarps * kUnroll);
  const int my_tiles = blockIdx.x < tiles ? (tiles - blockIdx.x + gridDim.x - 1) / gridDim.x : 0;
  const int units = my_tiles * per_tile;
  const uint32_t lane_offset = lane * 4;
  float acc[4] = {0, 0, 0, 0};

  auto load = [&](int unit, uint4 (&raw)[kUnroll][2], float (&scale)[kUnroll][2]) {
    const int tile = blockIdx.x + (unit / per_tile) * gridDim.x;
    const int first = warp + (unit % per_tile) * kWarps * kUnroll;
    const int n_lo = tile * 16 + g, n_hi = n_lo + 8;
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int c = (first + u * kWarps) * 4 + t;
      const bool lo_ok = c < chunks && n_lo < N, hi_ok = c < chunks && n_hi < N;
      raw[u][0] = lo_ok ? __ldcs(reinterpret_cast<const uint4*>(w.packed) + (int64_t)n_lo * chunks + c) : make_uint4(0, 0, 0, 0);
      raw[u][1] = hi_ok ? __ldcs(reinterpret_cast<const uint4*>(w.packed) + (int64_t)n_hi * chunks + c) : make_uint4(0, 0, 0, 0);
      scale[u][0] = lo_ok ? __ldg(w.absmax + (((int64_t)n_lo * K + c * kK) >> 6)) : 0.f;
      scale[u][1] = hi_ok ? __ldg(w.absmax + (((int64_t)n_hi * K + c * kK) >> 6)) : 0.f;
    }
  };
  auto compute = [&](int unit, const uint4 (&raw)[kUnroll][2], const float (&scale)[kUnroll][2]) {
    const int tile = blockIdx.x + (unit / per_tile) * gridDim.x;
    const int first = warp + (unit % per_tile) * kWarps * kUnroll;
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int step = first + u * kWarps;
      if (step >= steps) break;
      const int c = step * 4 + t;
      uint32_t lo[2][kPairs], hi[2][kPairs];
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        const uint32_t words[4] = {raw[u][r].x, raw[u][r].y, raw[u][r].z, raw[u][r].w};
        const uint32_t scale2 = uint32_t(bf16_bits(scale[u][r])) * 0x10001u;
#pragma unroll
        for (int j = 0; j < kPairs; ++j) {
          const uint32_t word = words[j / 2];
          const int p0 = 2 * (j % 2), p1 = p0 + 1;
          const uint32_t s0 = p0 == 0 ? word << 7 : word >> (8 * p0 - 7);
          const uint32_t s1 = word >> (8 * p1 - 7);
          lo[r][j] = bf16x2_mul(*reinterpret_cast<const uint32_t*>(smem + ((s0 & 0x7F80u) | lane_offset)), scale2);
          hi[r][j] = bf16x2_mul(*reinterpret_cast<const uint32_t*>(smem + ((s1 & 0x7F80u) | lane_offset)), scale2);
        }
      }
      uint4 act[kActLoads];
#pragma unroll
      for (int i = 0; i < kActLoads; ++i)
        act[i] = (g == 0 && c < chunks) ? __ldg(reinterpret_cast<const uint4*>(A + c * kK) + i) : make_uint4(0, 0, 0, 0);
      const uint32_t* aw = reinterpret_cast<const uint32_t*>(act);
#pragma unroll
      for (int j = 0; j < kPairs; ++j) {
        const uint32_t a[4] = {lo[0][j], lo[1][j], hi[0][j], hi[1][j]};
        mma_bf16(acc, a, aw[2 * j], aw[2 * j + 1]);
      }
    }
    if (unit % per_tile == per_tile - 1) {
      if (t == 0) {
        partial[warp * 16 + g] = acc[0];
        partial[warp * 16 + g + 8] = acc[2];
      }
      acc[0] = acc[1] = acc[2] = acc[3] = 0.f;
      __syncthreads();
      if (threadIdx.x < 16) {
        float s = 0;
        for (int ww = 0; ww < kWarps; ++ww) s += partial[ww * 16 + threadIdx.x];
        const int n = tile * 16 + threadIdx.x;
        if (n < N) out[n] = __float2bfloat16_rn(s);
      }
      __syncthreads();
    }
  };
  uint4 raw_a[kUnroll][2], raw_b[kUnroll][2];
  float scale_a[kUnroll][2], scale_b[kUnroll][2];
  if (units > 0) load(0, raw_a, scale_a);
  for (int unit = 0; unit < units; unit += 2) {
    if (unit + 1 < units) load(unit + 1, raw_b, scale_b);
    compute(unit, raw_a, scale_a);
    if (unit + 2 < units) load(unit + 2, raw_a, scale_a);
    if (unit + 1 < units) compute(unit + 1, raw_b, scale_b);
  }
}


// ---------------------------------------------------------------------------------------------------------
// Line-wise loads: a warp step covers 16 rows x 8 chunks (128 bytes of each row); load i of lane l reads
// chunk l % 8 of row 4i + l / 8, so a load instruction reads 4 whole 128-byte lines. A warp-private
// shared-memory transpose hands lane (g, t) chunks t and 4 + t of rows g and g + 8, as the mma wants.
template <int kWarps, int kUnroll, int kMinBlocks>
__global__ void __launch_bounds__(kWarps * 32, kMinBlocks)
    nf4_lines(const __nv_bfloat16* __restrict__ A, Nf4 w, int N, int K, __nv_bfloat16* __restrict__ out, int tiles) {
  constexpr int kK = 32, kPairs = 8, kThreads = kWarps * 32;
  constexpr int kRowStride = 12;  // uint4 per staged row: rows g and g + 1 in different bank halves
  extern __shared__ uint4 shared_words[];
  char* smem = reinterpret_cast<char*>(shared_words);
  uint4* staged = reinterpret_cast<uint4*>(smem + 256 * 32 * 4) + (threadIdx.x / 32) * 16 * kRowStride;
  float* staged_scale = reinterpret_cast<float*>(reinterpret_cast<uint4*>(smem + 256 * 32 * 4) + kWarps * 16 * kRowStride) + (threadIdx.x / 32) * 16 * 8;
  float* partial = reinterpret_cast<float*>(reinterpret_cast<uint4*>(smem + 256 * 32 * 4) + kWarps * 16 * kRowStride) + kWarps * 16 * 8;
  __shared__ uint16_t values[16];
  if (threadIdx.x < 16) values[threadIdx.x] = bf16_bits(w.codes[threadIdx.x]);
  __syncthreads();
  uint4* table = reinterpret_cast<uint4*>(smem);
  for (int i = threadIdx.x; i < 256 * 32 / 4; i += kThreads) {
    const int byte = i / 8;
    const uint32_t pair = values[byte >> 4] | (uint32_t(values[byte & 15]) << 16);
    table[i] = make_uint4(pair, pair, pair, pair);
  }
  __syncthreads();
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  const int chunks = K / kK;
  const int steps = (chunks + 7) / 8;
  const uint32_t lane_offset = lane * 4;
  const int load_row = lane / 8, load_chunk = lane % 8;
  for (int tile = blockIdx.x; tile < tiles; tile += gridDim.x) {
    float acc[4] = {0, 0, 0, 0};
    for (int first = warp; first < steps; first += kWarps * kUnroll) {
      uint4 raw[kUnroll][4];
      float scale[kUnroll][4];
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        const int c = (first + u * kWarps) * 8 + load_chunk;
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          const int n = tile * 16 + 4 * i + load_row;
          const bool ok = c < chunks && n < N;
          raw[u][i] = ok ? __ldcs(reinterpret_cast<const uint4*>(w.packed) + (int64_t)n * chunks + c) : make_uint4(0, 0, 0, 0);
          scale[u][i] = ok ? __ldg(w.absmax + (((int64_t)n * K + c * kK) >> 6)) : 0.f;
        }
      }
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        const int step = first + u * kWarps;
        if (step >= steps) break;
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          staged[(4 * i + load_row) * kRowStride + load_chunk] = raw[u][i];
          staged_scale[(4 * i + load_row) * 8 + load_chunk] = scale[u][i];
        }
        __syncwarp();
#pragma unroll
        for (int half = 0; half < 2; ++half) {
          const int cl = 4 * half + t;
          const int c = step * 8 + cl;
          uint32_t lo[2][kPairs], hi[2][kPairs];
#pragma unroll
          for (int r = 0; r < 2; ++r) {
            const uint4 raw_r = staged[(g + 8 * r) * kRowStride + cl];
            const float sc = staged_scale[(g + 8 * r) * 8 + cl];
            const uint32_t words[4] = {raw_r.x, raw_r.y, raw_r.z, raw_r.w};
            const uint32_t scale2 = uint32_t(bf16_bits(sc)) * 0x10001u;
#pragma unroll
            for (int j = 0; j < kPairs; ++j) {
              const uint32_t word = words[j / 2];
              const int p0 = 2 * (j % 2), p1 = p0 + 1;
              const uint32_t s0 = p0 == 0 ? word << 7 : word >> (8 * p0 - 7);
              const uint32_t s1 = word >> (8 * p1 - 7);
              lo[r][j] = bf16x2_mul(*reinterpret_cast<const uint32_t*>(smem + ((s0 & 0x7F80u) | lane_offset)), scale2);
              hi[r][j] = bf16x2_mul(*reinterpret_cast<const uint32_t*>(smem + ((s1 & 0x7F80u) | lane_offset)), scale2);
            }
          }
          uint4 act[4];
#pragma unroll
          for (int i = 0; i < 4; ++i)
            act[i] = (g == 0 && c < chunks) ? __ldg(reinterpret_cast<const uint4*>(A + c * kK) + i) : make_uint4(0, 0, 0, 0);
          const uint32_t* aw = reinterpret_cast<const uint32_t*>(act);
#pragma unroll
          for (int j = 0; j < kPairs; ++j) {
            const uint32_t a[4] = {lo[0][j], lo[1][j], hi[0][j], hi[1][j]};
            mma_bf16(acc, a, aw[2 * j], aw[2 * j + 1]);
          }
        }
        __syncwarp();
      }
    }
    if (t == 0) {
      partial[warp * 16 + g] = acc[0];
      partial[warp * 16 + g + 8] = acc[2];
    }
    __syncthreads();
    if (threadIdx.x < 16) {
      float s = 0;
      for (int ww = 0; ww < kWarps; ++ww) s += partial[ww * 16 + threadIdx.x];
      const int n = tile * 16 + threadIdx.x;
      if (n < N) out[n] = __float2bfloat16_rn(s);
    }
    __syncthreads();
  }
}

// ---------------------------------------------------------------------------------------------------------
__global__ void reference_nf4(const __nv_bfloat16* A, Nf4 w, int N, int K, float* out) {
  const int n = blockIdx.x * blockDim.x + threadIdx.x;
  if (n >= N) return;
  double s = 0;
  for (int k = 0; k < K; ++k) {
    const int64_t e = (int64_t)n * K + k;
    const uint8_t byte = w.packed[e / 2];
    const int code = (e % 2 == 0) ? byte >> 4 : byte & 15;
    s += (double)w.codes[code] * w.absmax[e / 64] * (double)__bfloat162float(A[k]);
  }
  out[n] = (float)s;
}
__global__ void reference_int8(const __nv_bfloat16* A, const int8_t* cb, const float* scb, int N, int K, float* out) {
  const int n = blockIdx.x * blockDim.x + threadIdx.x;
  if (n >= N) return;
  double s = 0;
  for (int k = 0; k < K; ++k) s += (double)cb[(int64_t)n * K + k] * (double)__bfloat162float(A[k]);
  out[n] = (float)(s * scb[n] / 127.0);
}

// ---------------------------------------------------------------------------------------------------------
static cudaStream_t g_stream;
static float time_graph(const std::function<void(int)>& launch, int copies, int iters = 60) {
  cudaStream_t stream;
  CK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  cudaGraph_t graph;
  cudaGraphExec_t exec;
  CK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeGlobal));
  g_stream = stream;
  for (int i = 0; i < iters; ++i) launch(i % copies);
  CK(cudaStreamEndCapture(stream, &graph));
  CK(cudaGraphInstantiate(&exec, graph, 0));
  cudaEvent_t a, b;
  CK(cudaEventCreate(&a));
  CK(cudaEventCreate(&b));
  CK(cudaGraphLaunch(exec, stream));
  CK(cudaStreamSynchronize(stream));
  std::vector<float> ms;
  for (int r = 0; r < 7; ++r) {
    CK(cudaEventRecord(a, stream));
    CK(cudaGraphLaunch(exec, stream));
    CK(cudaEventRecord(b, stream));
    CK(cudaEventSynchronize(b));
    float t;
    CK(cudaEventElapsedTime(&t, a, b));
    ms.push_back(t * 1000.f / iters);
  }
  std::sort(ms.begin(), ms.end());
  CK(cudaGraphExecDestroy(exec));
  CK(cudaGraphDestroy(graph));
  CK(cudaStreamDestroy(stream));
  return ms[ms.size() / 2];
}
static uint32_t rng_state = 12345;
static uint32_t rnd() { rng_state = rng_state * 1664525u + 1013904223u; return rng_state >> 8; }

int main(int argc, char** argv) {
  const int N = argc > 1 ? atoi(argv[1]) : 14336, K = argc > 2 ? atoi(argv[2]) : 4096;
  cudaDeviceProp prop;
  CK(cudaGetDeviceProperties(&prop, 0));
  const int sms = prop.multiProcessorCount;
  printf("device %s, %d SMs, N=%d K=%d\n", prop.name, sms, N, K);
  const int64_t elems = (int64_t)N * K, blocks = elems / 64;
  const int copies = 6;
  // host data
  std::vector<uint8_t> packed(elems / 2);
  for (auto& b : packed) b = rnd() & 0xFF;
  std::vector<float> absmax(blocks);
  for (auto& a : absmax) a = 0.01f + (rnd() % 1000) / 1000.f;
  std::vector<uint8_t> absmax_q(blocks);
  for (auto& q : absmax_q) q = rnd() & 0xFF;
  std::vector<float> nested_code(256), nested_absmax((blocks + 255) / 256);
  for (int i = 0; i < 256; ++i) nested_code[i] = (i - 128) / 128.f;
  for (auto& v : nested_absmax) v = 0.5f;
  float offset = 0.5f;
  // make float absmax consistent with the nested form, so both modes compute the same result
  for (int64_t b = 0; b < blocks; ++b) absmax[b] = nested_code[absmax_q[b]] * nested_absmax[b >> 8] + offset;
  const float nf4[16] = {-1.0f, -0.6961928f, -0.5250731f, -0.3949175f, -0.2844414f, -0.1847734f, -0.0910500f, 0.0f,
                         0.0795803f, 0.1609302f, 0.2461123f, 0.3379152f, 0.4407098f, 0.5626170f, 0.7229568f, 1.0f};
  std::vector<int8_t> cb(elems);
  for (auto& c : cb) c = (int8_t)((int)(rnd() % 255) - 127);
  std::vector<float> scb(N);
  for (auto& s : scb) s = 0.05f + (rnd() % 100) / 100.f;
  std::vector<__nv_bfloat16> A(K);
  for (auto& a : A) a = __float2bfloat16((int)(rnd() % 2001 - 1000) / 1000.f);

  // device data, `copies` copies of the weights
  std::vector<Nf4> w(copies);
  std::vector<int8_t*> d_cb(copies);
  std::vector<float*> d_scb(copies);
  float *d_codes, *d_ncode;
  CK(cudaMalloc(&d_codes, 64));
  CK(cudaMemcpy(d_codes, nf4, 64, cudaMemcpyHostToDevice));
  CK(cudaMalloc(&d_ncode, 1024));
  CK(cudaMemcpy(d_ncode, nested_code.data(), 1024, cudaMemcpyHostToDevice));
  for (int c = 0; c < copies; ++c) {
    uint8_t* p; float* am; uint8_t* aq; float* na;
    CK(cudaMalloc(&p, packed.size())); CK(cudaMemcpy(p, packed.data(), packed.size(), cudaMemcpyHostToDevice));
    CK(cudaMalloc(&am, blocks * 4)); CK(cudaMemcpy(am, absmax.data(), blocks * 4, cudaMemcpyHostToDevice));
    CK(cudaMalloc(&aq, blocks)); CK(cudaMemcpy(aq, absmax_q.data(), blocks, cudaMemcpyHostToDevice));
    CK(cudaMalloc(&na, nested_absmax.size() * 4)); CK(cudaMemcpy(na, nested_absmax.data(), nested_absmax.size() * 4, cudaMemcpyHostToDevice));
    w[c] = Nf4{p, am, aq, d_ncode, na, offset, d_codes};
    CK(cudaMalloc(&d_cb[c], elems)); CK(cudaMemcpy(d_cb[c], cb.data(), elems, cudaMemcpyHostToDevice));
    CK(cudaMalloc(&d_scb[c], N * 4)); CK(cudaMemcpy(d_scb[c], scb.data(), N * 4, cudaMemcpyHostToDevice));
  }
  __nv_bfloat16 *d_A, *d_out;
  float* d_ref;
  uint32_t* d_sink;
  CK(cudaMalloc(&d_A, K * 2)); CK(cudaMemcpy(d_A, A.data(), K * 2, cudaMemcpyHostToDevice));
  CK(cudaMalloc(&d_out, N * 2)); CK(cudaMalloc(&d_ref, N * 4)); CK(cudaMalloc(&d_sink, 4));
  std::vector<float> ref_nf4(N), ref_i8(N);
  reference_nf4<<<(N + 127) / 128, 128>>>(d_A, w[0], N, K, d_ref);
  CK(cudaMemcpy(ref_nf4.data(), d_ref, N * 4, cudaMemcpyDeviceToHost));
  reference_int8<<<(N + 127) / 128, 128>>>(d_A, d_cb[0], d_scb[0], N, K, d_ref);
  CK(cudaMemcpy(ref_i8.data(), d_ref, N * 4, cudaMemcpyDeviceToHost));
  CK(cudaDeviceSynchronize());

  const double nf4_bytes_f = elems / 2.0 + blocks * 4.0, nf4_bytes_n = elems / 2.0 + blocks * 1.0, i8_bytes = elems + N * 4.0;
  auto check = [&](const std::vector<float>& ref) {
    std::vector<__nv_bfloat16> o(N);
    CK(cudaMemcpy(o.data(), d_out, N * 2, cudaMemcpyDeviceToHost));
    double worst = 0, scale = 0;
    for (int n = 0; n < N; ++n) scale = std::max(scale, (double)fabs(ref[n]));
    for (int n = 0; n < N; ++n) worst = std::max(worst, fabs((double)__bfloat162float(o[n]) - ref[n]) / scale);
    return worst;
  };
  auto report = [&](const char* name, float us, double bytes, double err) {
    printf("%-44s %7.2f us  %5.2f TB/s  err %.1e\n", name, us, bytes / us / 1e6, err);
  };

  // floor: read the same bytes as the NF4 weights (packed + float absmax) and the INT8 weights
  {
    std::vector<uint4*> bufs(copies);
    const int64_t n16 = (int64_t)(i8_bytes / 16);
    for (int c = 0; c < copies; ++c) CK(cudaMalloc(&bufs[c], n16 * 16));
    for (int c = 0; c < copies; ++c) CK(cudaMemset(bufs[c], 1, n16 * 16));
    for (int per_sm : {8}) {
      for (int threads : {256}) {
        const int64_t nn = (int64_t)(nf4_bytes_n / 16);
        float us = time_graph([&](int c) { read_floor_unrolled<4><<<sms * per_sm * 256 / threads, threads, 0, g_stream>>>(bufs[c], nn, d_sink); }, copies);
        char name[96]; snprintf(name, sizeof name, "floor read NF4-nested bytes  u4 %d thr x %d/SM", threads, per_sm * 256 / threads);
        report(name, us, nn * 16.0, 0);
        us = time_graph([&](int c) { read_floor_unrolled<4><<<sms * per_sm * 256 / threads, threads, 0, g_stream>>>(bufs[c], n16, d_sink); }, copies);
        snprintf(name, sizeof name, "floor read INT8 bytes  u4 %d thr x %d/SM", threads, per_sm * 256 / threads);
        report(name, us, n16 * 16.0, 0);
      }
    }
    for (int c = 0; c < copies; ++c) CK(cudaFree(bufs[c]));
    // copy bandwidth as the repo bench measures it (read + write)
  }

  const int tiles = (N + 15) / 16;
#define MMA(W, U, S, R)                                                                                               \
  {                                                                                                                  \
    auto kern = &nf4_mma<W, U, S, R>;                                                                                \
    const int smem = 256 * 32 * 4 + W * 8 * 16 * 4 + 1024;                                                            \
    CK(cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));                               \
    int per_sm = 0;                                                                                                  \
    CK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kern, W * 32, smem));                                   \
    const int ctas = std::min(tiles, per_sm * sms);                                                                  \
    float us = time_graph([&](int c) { kern<<<ctas, W * 32, smem, g_stream>>>(d_A, w[c], N, K, d_out, tiles); }, copies); \
    kern<<<ctas, W * 32, smem>>>(d_A, w[0], N, K, d_out, tiles);                                                     \
    CK(cudaDeviceSynchronize());                                                                                     \
    char name[96]; snprintf(name, sizeof name, "nf4_mma warps %d unroll %d scale %d raw %d (%d/SM)", W, U, S, R, per_sm); \
    report(name, us, S == 2 ? nf4_bytes_n : nf4_bytes_f, (S == 1 || R) ? -1 : check(ref_nf4));                         \
  }
  MMA(8, 4, 0, 0) MMA(8, 4, 1, 0) MMA(8, 4, 0, 1) MMA(8, 4, 1, 1) MMA(8, 4, 2, 0)

#define SIMT(W, R, U, S)                                                                                              \
  {                                                                                                                  \
    auto kern = &nf4_simt<W, R, U, S>;                                                                               \
    const int smem = 256 * 32 * 4 + 1024;                                                                            \
    CK(cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));                               \
    const int ctas = (N + W * R - 1) / (W * R);                                                                      \
    float us = time_graph([&](int c) { kern<<<ctas, W * 32, smem, g_stream>>>(d_A, w[c], N, K, d_out); }, copies);    \
    kern<<<ctas, W * 32, smem>>>(d_A, w[0], N, K, d_out);                                                            \
    CK(cudaDeviceSynchronize());                                                                                     \
    char name[96]; snprintf(name, sizeof name, "nf4_simt warps %d rows %d unroll %d scale %d", W, R, U, S);           \
    report(name, us, S == 2 ? nf4_bytes_n : nf4_bytes_f, S == 1 ? -1 : check(ref_nf4));                                \
  }

#define I8(W, R, U)                                                                                                   \
  {                                                                                                                  \
    auto kern = &int8_simt<W, R, U>;                                                                                 \
    const int ctas = (N + W * R - 1) / (W * R);                                                                      \
    float us = time_graph([&](int c) { kern<<<ctas, W * 32, 0, g_stream>>>(d_A, d_cb[c], d_scb[c], N, K, d_out); }, copies); \
    kern<<<ctas, W * 32>>>(d_A, d_cb[0], d_scb[0], N, K, d_out);                                                     \
    CK(cudaDeviceSynchronize());                                                                                     \
    char name[96]; snprintf(name, sizeof name, "int8_simt warps %d rows %d unroll %d", W, R, U);                      \
    report(name, us, i8_bytes, check(ref_i8));                                                                       \
  }
  I8(4, 1, 4)

  SIMT(8, 4, 4, 0) SIMT(8, 2, 4, 1) SIMT(8, 2, 4, 2)
  I8(8, 1, 8) I8(8, 2, 4)
#define RING(W, S, B, I)                                                                                              \
  {                                                                                                                  \
    auto kern = &ring_gemv<W, S, B, I>;                                                                              \
    const int smem = (I ? 0 : 256 * 32 * 4) + S * 16 * (B + 64) + S * 16 * kScalesPerRow * 4 + S * 16 * 4 + W * 16 * 4; \
    CK(cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));                               \
    int per_sm = 0;                                                                                                  \
    CK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kern, W * 32, smem));                                   \
    const int ctas = std::min(tiles, per_sm * sms);                                                                  \
    float us = time_graph([&](int c) { kern<<<ctas, W * 32, smem, g_stream>>>(d_A, w[c], d_cb[c], d_scb[c], N, K, d_out, tiles); }, copies); \
    kern<<<ctas, W * 32, smem>>>(d_A, w[0], d_cb[0], d_scb[0], N, K, d_out, tiles);                                  \
    CK(cudaDeviceSynchronize());                                                                                     \
    char name[96]; snprintf(name, sizeof name, "ring %s warps %d stages %d bytes %d (%d/SM)", I ? "int8" : "nf4", W, S, B, per_sm); \
    report(name, us, I ? i8_bytes : nf4_bytes_f, check(I ? ref_i8 : ref_nf4));                                       \
  }
  RING(8, 4, 1024, 0) RING(8, 3, 512, 0) RING(4, 4, 256, 1) RING(8, 3, 1024, 1)
#define PIPE(W, U, B)                                                                                                 \
  {                                                                                                                  \
    auto kern = &nf4_pipe<W, U, B>;                                                                                  \
    const int smem = 256 * 32 * 4 + W * 16 * 4;                                                                      \
    CK(cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));                               \
    int per_sm = 0;                                                                                                  \
    CK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kern, W * 32, smem));                                   \
    const int ctas = std::min(tiles, per_sm * sms);                                                                  \
    float us = time_graph([&](int c) { kern<<<ctas, W * 32, smem, g_stream>>>(d_A, w[c], N, K, d_out, tiles); }, copies); \
    kern<<<ctas, W * 32, smem>>>(d_A, w[0], N, K, d_out, tiles);                                                     \
    CK(cudaDeviceSynchronize());                                                                                     \
    char name[96]; snprintf(name, sizeof name, "nf4_pipe warps %d unroll %d minb %d (%d/SM)", W, U, B, per_sm);        \
    report(name, us, nf4_bytes_f, check(ref_nf4));                                                                   \
  }
  PIPE(8, 1, 2) PIPE(8, 2, 2) PIPE(4, 2, 4)

#define LINES(W, U, B)                                                                                                \
  {                                                                                                                  \
    auto kern = &nf4_lines<W, U, B>;                                                                                 \
    const int smem = 256 * 32 * 4 + W * 16 * 12 * 16 + W * 16 * 8 * 4 + W * 16 * 4;                                   \
    CK(cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));                               \
    int per_sm = 0;                                                                                                  \
    CK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kern, W * 32, smem));                                   \
    const int ctas = std::min(tiles, per_sm * sms);                                                                  \
    float us = time_graph([&](int c) { kern<<<ctas, W * 32, smem, g_stream>>>(d_A, w[c], N, K, d_out, tiles); }, copies); \
    kern<<<ctas, W * 32, smem>>>(d_A, w[0], N, K, d_out, tiles);                                                     \
    CK(cudaDeviceSynchronize());                                                                                     \
    char name[96]; snprintf(name, sizeof name, "nf4_lines warps %d unroll %d minb %d (%d/SM)", W, U, B, per_sm);       \
    report(name, us, nf4_bytes_f, check(ref_nf4));                                                                   \
  }
  LINES(8, 1, 2) LINES(8, 2, 2) LINES(4, 2, 3) LINES(4, 1, 4) LINES(4, 2, 4) LINES(8, 1, 3) LINES(2, 2, 8) LINES(2, 4, 6) LINES(4, 4, 2)
  return 0;
}
