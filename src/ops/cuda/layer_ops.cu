// CUDA kernels of the fused layer ops (src/ops/layer_ops.hpp). Each replaces several ATen launches in a
// decode step; the rounding follows the ATen composition (float math, rounded to the dtype where ATen's
// elementwise ops round), so results differ from the CPU side only in the order of float32 sums. All are
// launched overlapped (launch.cuh): each waits for the previous kernel before it touches an activation.
#include <ATen/Dispatch.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <algorithm>
#include <cfloat>

#include "../layer_ops.hpp"
#include "blockwise.cuh"
#include "launch.cuh"

namespace imagetotext::ops {
namespace {

using cuda::kWarpSize;
using cuda::launch_overlapped;
using cuda::rounded;
using cuda::let_next_kernel_start;
using cuda::wait_for_previous_kernels;

// ---- rms_norm: one CTA per row ----------------------------------------------------------------------------------
// Rows of up to kRmsCached * blockDim.x values are read once (kept in registers); longer rows read twice.
constexpr int kRmsCached = 8;

template <typename T>
__global__ void rms_norm_kernel(const T* x, const T* __restrict__ weight, T* out, int64_t n, float eps) {
  let_next_kernel_start();
  const int64_t offset = blockIdx.x * n;
  float gamma[kRmsCached];  // the norm's weight depends on no earlier kernel: loaded before the wait
#pragma unroll
  for (int c = 0; c < kRmsCached; ++c) {
    const int64_t i = threadIdx.x + c * static_cast<int64_t>(blockDim.x);
    gamma[c] = i < n ? static_cast<float>(weight[i]) : 0.0f;
  }
  wait_for_previous_kernels(x);
  float cached[kRmsCached];
#pragma unroll
  for (int c = 0; c < kRmsCached; ++c) {
    const int64_t i = threadIdx.x + c * static_cast<int64_t>(blockDim.x);
    cached[c] = i < n ? static_cast<float>(x[offset + i]) : 0.0f;
  }
  float squares = 0.0f;
#pragma unroll
  for (int c = 0; c < kRmsCached; ++c) squares += cached[c] * cached[c];
  for (int64_t i = threadIdx.x + kRmsCached * static_cast<int64_t>(blockDim.x); i < n; i += blockDim.x) {
    const float v = static_cast<float>(x[offset + i]);
    squares += v * v;
  }
  const float inverse = rsqrtf(cuda::block_sum(squares) / static_cast<float>(n) + eps);
#pragma unroll
  for (int c = 0; c < kRmsCached; ++c) {
    const int64_t i = threadIdx.x + c * static_cast<int64_t>(blockDim.x);
    if (i < n) out[offset + i] = cuda::rms_normed<T>(cached[c], inverse, gamma[c]);
  }
  for (int64_t i = threadIdx.x + kRmsCached * static_cast<int64_t>(blockDim.x); i < n; i += blockDim.x) {
    out[offset + i] =
        cuda::rms_normed<T>(static_cast<float>(x[offset + i]), inverse, static_cast<float>(weight[i]));
  }
}

at::Tensor rms_norm_cuda(const at::Tensor& x_in, const at::Tensor& weight_in, double eps) {
  detail::check_rms_norm(x_in, weight_in);
  const c10::cuda::CUDAGuard guard(x_in.device());
  const at::Tensor x = x_in.contiguous(), weight = weight_in.contiguous();
  at::Tensor out = at::empty_like(x);
  const int64_t n = x.size(-1), rows = n == 0 ? 0 : x.numel() / n;
  if (rows == 0) return out;
  const int threads = n >= 1024 ? 256 : 128;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "rms_norm_cuda", [&] {
    launch_overlapped(&rms_norm_kernel<scalar_t>, dim3(static_cast<unsigned>(rows)), dim3(threads), 0,
                      x.data_ptr<scalar_t>(), weight.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(), n,
                      static_cast<float>(eps));
  });
  return out;
}

// ---- rotary: one thread per output element of a contiguous [batch, heads, length, dim] ------------------------
struct Strides4 {
  int64_t size[4];
  int64_t stride[4];
};

Strides4 strides_of(const at::Tensor& x) {
  Strides4 xs{};
  for (int i = 0; i < 4; ++i) {
    xs.size[i] = x.size(i);
    xs.stride[i] = x.stride(i);
  }
  return xs;
}

// value * c + partner * s rounded as ATen's x * cos + rotate_half(x) * sin rounds: each product, then the sum
// (partner: rotate_half(x)'s element, negated in the first half).
template <typename T>
__device__ __forceinline__ float rotated(float value, float partner, float c, float s) {
  return rounded<T>(rounded<T>(value * c) + rounded<T>(partner * s));
}

// Element d of the rotation of the head that starts at `base` (elements `stride` apart).
template <typename T>
__device__ __forceinline__ float rotated_element(const T* base, int64_t stride, int64_t d, int64_t half,
                                                 float c, float s) {
  const float value = static_cast<float>(base[d * stride]);
  const float partner = d < half ? -static_cast<float>(base[(d + half) * stride])
                                 : static_cast<float>(base[(d - half) * stride]);
  return rotated<T>(value, partner, c, s);
}

template <typename T>
__global__ void rotary_kernel(const T* x, Strides4 xs, const T* cos_table,
                              const T* sin_table, int64_t table_row, T* out, int64_t total) {
  let_next_kernel_start();
  wait_for_previous_kernels(x, cos_table, sin_table);
  const int64_t dim = xs.size[3], half = dim / 2, length = xs.size[2], heads = xs.size[1];
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t d = i % dim, t = (i / dim) % length, h = (i / (dim * length)) % heads, b = i / (dim * length * heads);
    const T* base = x + b * xs.stride[0] + h * xs.stride[1] + t * xs.stride[2];
    const float c = static_cast<float>(cos_table[t * table_row + d]), s = static_cast<float>(sin_table[t * table_row + d]);
    out[i] = static_cast<T>(rotated_element(base, xs.stride[3], d, half, c, s));
  }
}

at::Tensor rotary_cuda(const at::Tensor& x, const at::Tensor& cos_in, const at::Tensor& sin_in) {
  detail::check_rotary(x, cos_in, sin_in);
  const c10::cuda::CUDAGuard guard(x.device());
  const at::Tensor cos = cos_in.contiguous(), sin = sin_in.contiguous();
  at::Tensor out = at::empty(x.sizes(), x.options());
  const int64_t total = x.numel();
  if (total == 0) return out;
  const Strides4 xs = strides_of(x);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "rotary_cuda", [&] {
    launch_overlapped(&rotary_kernel<scalar_t>, dim3(cuda::cta_count(total, cuda::kThreads)), dim3(cuda::kThreads), 0,
                      x.data_ptr<scalar_t>(), xs, cos.data_ptr<scalar_t>(), sin.data_ptr<scalar_t>(), cos.size(1),
                      out.data_ptr<scalar_t>(), total);
  });
  return out;
}

// ---- silu_mul --------------------------------------------------------------------------------------------------
// gate and up as [rows, width] with their own row strides (the halves of a stacked gate/up projection are
// such views): no copy to make them contiguous.
template <typename T>
__global__ void silu_mul_kernel(const T* gate, int64_t gate_row_stride, const T* up,
                                int64_t up_row_stride, T* out, int64_t width, int64_t total) {
  let_next_kernel_start();
  wait_for_previous_kernels(gate, up);
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t row = i / width, column = i % width;
    const float g = static_cast<float>(gate[row * gate_row_stride + column]);
    out[i] = cuda::silu_times<T>(g, static_cast<float>(up[row * up_row_stride + column]));
  }
}

// The stride between rows of x seen as [rows, x.size(-1)], or -1 when x is not such a view (last dim not
// unit-stride, or leading dims that do not collapse into one).
int64_t row_stride_of(const at::Tensor& x) {
  if (x.dim() == 0 || x.stride(-1) != 1) return -1;
  if (x.dim() == 1) return x.size(0);
  for (int64_t d = 0; d + 2 < x.dim(); ++d) {
    if (x.size(d) != 1 && x.stride(d) != x.stride(d + 1) * x.size(d + 1)) return -1;
  }
  return x.stride(-2);
}

at::Tensor silu_mul_cuda(const at::Tensor& gate_in, const at::Tensor& up_in) {
  detail::check_silu_mul(gate_in, up_in);
  const c10::cuda::CUDAGuard guard(gate_in.device());
  // gate and up as [rows, width] with their row strides; copied first where they are not such views.
  at::Tensor gate = gate_in, up = up_in;
  int64_t gate_row_stride = row_stride_of(gate), up_row_stride = row_stride_of(up);
  if (gate_row_stride < 0) gate_row_stride = row_stride_of(gate = gate.contiguous());
  if (up_row_stride < 0) up_row_stride = row_stride_of(up = up.contiguous());
  at::Tensor out = at::empty(gate.sizes(), gate.options());
  const int64_t total = gate.numel(), width = gate.dim() == 0 ? 1 : gate.size(-1);
  if (total == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, gate.scalar_type(), "silu_mul_cuda", [&] {
    launch_overlapped(&silu_mul_kernel<scalar_t>, dim3(cuda::cta_count(total, cuda::kThreads)), dim3(cuda::kThreads),
                      0, gate.data_ptr<scalar_t>(), gate_row_stride, up.data_ptr<scalar_t>(), up_row_stride,
                      out.data_ptr<scalar_t>(), width, total);
  });
  return out;
}

// ---- decode_attention: split over the positions (flash-decoding) ---------------------------------------------
// One CTA per (sequence, head) left 120 of the H100's 132 SMs idle (SmolVLM-256M has 9 heads) and took 32 us a
// call over a 1,100-token cache. Here the positions are cut into `splits` chunks of `chunk` (fixed by the
// capacity, so a CUDA graph can record the launch; chunks past the current position exit at once), and
// each CTA reduces its chunk to a partial softmax state (max, sum, unnormalized output); a second kernel
// merges the partials of a (sequence, head). In a CTA, groups of 8 lanes take one position each: lane j
// holds dims [j*E, j*E + E) of the query, key and value (16-byte loads where the layout allows), the dot
// product is reduced over the 8 lanes, and each group keeps an online softmax over its positions.
//
// append_decode_attention runs the same kernels with the new token's cache write (and rotary embedding, for
// rotary models) folded into the split kernel, one kernel less a layer than a cache-write kernel before it.
// Every CTA loads (and rotates) the query itself; the CTA whose chunk holds the new position also loads that
// position's key (rotated and rounded as the cache holds it, so the sums are the unfused ones) and value from the
// projection with the query, uses them there instead of the cache, and, for the first query head of a key/value
// head, stores them.
// The stores are issued after those loads: a store waiting on its data ahead of the query's loads cost a round
// trip (0.68 -> 0.72 ms a SmolVLM-256M token in a first version).
constexpr int kSplitThreads = 128;
constexpr int kSplitGroups = kSplitThreads / 8;  // positions in flight per CTA round
// Positions a group loads before it uses any: 4 (E = 4 or 8), fewer for wider lanes, so a lane's keys and values
// in flight stay at 32 floats (E = 32 at 4 had spilled 12 KB a thread).
constexpr int split_unroll(int E) { return E <= 8 ? 4 : 32 / E; }
constexpr int kMaxSplits = 128;

// E elements of row `row` from dim index j*E on, as float; `vector`: the E values are 16-byte aligned and whole.
template <typename T, int E>
__device__ __forceinline__ void load_lane_values(const T* row, int j, int dim, bool vector, float* out) {
  if (vector) {
    constexpr int kPer = 16 / static_cast<int>(sizeof(T));
    if constexpr (E % kPer == 0) {
      if (j * E >= dim) {  // lanes past the head's end (dim = 80 with E = 16: lanes 5-7)
#pragma unroll
        for (int e = 0; e < E; ++e) out[e] = 0.0f;
        return;
      }
#pragma unroll
      for (int i = 0; i < E / kPer; ++i) {
        const uint4 raw = *(reinterpret_cast<const uint4*>(row + j * E) + i);  // plain: see launch.cuh
        const T* values = reinterpret_cast<const T*>(&raw);
#pragma unroll
        for (int e = 0; e < kPer; ++e) out[i * kPer + e] = static_cast<float>(values[e]);
      }
      return;
    }
  }
#pragma unroll
  for (int e = 0; e < E; ++e) {
    const int d = j * E + e;
    out[e] = d < dim ? static_cast<float>(row[d]) : 0.0f;
  }
}

// The new token of append_decode_attention as the projection wrote it (any strides), before any rotation.
template <typename T>
struct NewToken {
  const T* query;
  Strides4 qs;
  const T* key;
  Strides4 ks;
  const T* value;
  Strides4 vs;
  const T* cos;  // null: no rotation
  const T* sin;
  bool table_per_sequence;  // cos, sin [batch, dim] (a row each) or [1, dim]
  bool vector;  // every head of query, key, value, cos and sin in unit stride, each lane's dims (and their partners
                // half a head away) in whole 16-byte pieces
};

// Lane j's E dims of the rotated head at `base` (elements `stride` apart), rounded to T as the rotary op rounds.
// With `vector` (stride 1), four 16-byte loads per piece: the dims, their partners, cos and sin.
template <typename T, int E>
__device__ __forceinline__ void load_lane_rotated(const T* base, int64_t stride, const T* cos, const T* sin, int j,
                                                  int dim, bool vector, float* out) {
  const int half = dim / 2;
  if (vector) {
    const bool first_half = j * E < half;
    float x[E], partner[E], c[E], s[E];
    load_lane_values<T, E>(base, j, dim, true, x);
    load_lane_values<T, E>(base + (first_half ? half : -half), j, dim, true, partner);
    load_lane_values<T, E>(cos, j, dim, true, c);
    load_lane_values<T, E>(sin, j, dim, true, s);
#pragma unroll
    for (int e = 0; e < E; ++e) {
      out[e] = rotated<T>(x[e], first_half ? -partner[e] : partner[e], c[e], s[e]);
    }
    return;
  }
#pragma unroll
  for (int e = 0; e < E; ++e) {
    const int d = j * E + e;
    out[e] = d < dim ? rotated_element(base, stride, d, half, static_cast<float>(cos[d]), static_cast<float>(sin[d]))
                     : 0.0f;
  }
}

template <typename T, int E>
__device__ __forceinline__ void load_lane_strided(const T* base, int64_t stride, int j, int dim, bool vector,
                                                  float* out) {
  if (vector) return load_lane_values<T, E>(base, j, dim, true, out);
#pragma unroll
  for (int e = 0; e < E; ++e) {
    const int d = j * E + e;
    out[e] = d < dim ? static_cast<float>(base[d * stride]) : 0.0f;
  }
}

template <typename T, int E, bool kNewToken>
__global__ void __launch_bounds__(kSplitThreads)
decode_attention_split_kernel(const T* query, T* keys, T* values, NewToken<T> token,
                              const int64_t* position, const int64_t* first_position,
                              float* partials, int64_t heads,
                              int64_t group, int64_t shared, int64_t capacity, int dim, float scale, int chunk,
                              int splits, bool vector) {
  constexpr int kUnroll = split_unroll(E);  // a CTA's round: kSplitGroups * kUnroll positions
  let_next_kernel_start();
  const int64_t sequence_head = blockIdx.y, sequence = sequence_head / heads, head = sequence_head % heads;
  // `shared` consecutive sequences read one row of the caches (1 but for decode_attention over an image's keys and
  // values held once for its beams).
  const int64_t kv_head = sequence / shared * (heads / group) + head / group;
  const int split = blockIdx.x;
  const int64_t chunk_begin = static_cast<int64_t>(split) * chunk;
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  // While the previous kernel runs, ask L2 for this chunk's cached keys and values: HBM misses otherwise, as a
  // step streams far more weights than L2 holds (on the H100 this took ~1 us off the attention's critical path in
  // each SmolVLM layer). A hint only, so it may read the position before the wait: a step stale at worst. (`vector`:
  // rows of whole 16-byte pieces at 16-byte aligned caches, as the bulk prefetch needs.)
  if (vector && threadIdx.x < 2) {
    const int64_t rows = min(chunk_begin + chunk, min(*position + 1, capacity)) - chunk_begin;
    if (rows > 0) {
      const T* base = (threadIdx.x == 0 ? keys : values) + (kv_head * capacity + chunk_begin) * dim;
      const unsigned bytes = static_cast<unsigned>(rows * dim * sizeof(T));
      asm volatile("cp.async.bulk.prefetch.L2.global [%0], %1;" ::"l"(base), "r"(bytes) : "memory");
    }
  }
#endif
  wait_for_previous_kernels(query, keys, values, position, first_position, token.query, token.key, token.value,
                            token.cos, token.sin);
  const int64_t filled = min(*position, capacity - 1) + 1;
  // The new token's position, or -1 when the step lies outside the caches (then nothing is written).
  const int64_t new_position = kNewToken && *position >= 0 && *position < capacity ? *position : -1;
  const T* cos = nullptr;
  const T* sin = nullptr;
  const T* new_key = nullptr;
  const T* new_value = nullptr;
  if constexpr (kNewToken) {
    if (token.cos != nullptr) {
      const int64_t table = token.table_per_sequence ? sequence * dim : 0;
      cos = token.cos + table;
      sin = token.sin + table;
    }
    const int64_t kv_in_sequence = head / group;
    new_key = token.key + sequence * token.ks.stride[0] + kv_in_sequence * token.ks.stride[1];
    new_value = token.value + sequence * token.vs.stride[0] + kv_in_sequence * token.vs.stride[1];
  }
  // A left-padded row starts at its first real position (the positions before it are padding).
  const int64_t start = first_position ? max(first_position[sequence], int64_t{0}) : 0;
  const int64_t begin = max(chunk_begin, start), end = min(chunk_begin + chunk, filled);
  float* partial = partials + (sequence_head * splits + split) * (dim + 2);
  if (begin >= end) {  // nothing to attend in this chunk (yet, or padding only): an empty state
    if (threadIdx.x == 0) {
      partial[0] = -FLT_MAX;
      partial[1] = 0.0f;
    }
    return;
  }
  const int gid = threadIdx.x / 8, j = threadIdx.x % 8;
  float q[E];
  // The new position's rotated key and value, loaded with the query (one round trip) in the CTA whose chunk
  // holds that position; the round that reaches it takes them from these registers.
  const bool holds_new = kNewToken && begin <= new_position && new_position < end;
  float new_k[E], new_v[E];
  if constexpr (kNewToken) {
    // As the op was asked: rotated (cos given) or as projected.
    auto load_new = [&](const T* base, int64_t stride, float* out) {
      if (cos != nullptr) {
        load_lane_rotated<T, E>(base, stride, cos, sin, j, dim, token.vector, out);
      } else {
        load_lane_strided<T, E>(base, stride, j, dim, token.vector, out);
      }
    };
    load_new(token.query + sequence * token.qs.stride[0] + head * token.qs.stride[1], token.qs.stride[3], q);
    if (holds_new) {
      load_new(new_key, token.ks.stride[3], new_k);
      load_lane_strided<T, E>(new_value, token.vs.stride[3], j, dim, token.vector, new_v);
      // Into the caches, by the CTA of the first query head of their key/value head: after the loads above are
      // issued, so no load waits for these stores' data.
      if (head % group == 0) {
#pragma unroll
        for (int e = 0; e < E; ++e) {
          const int d = j * E + e;
          if (gid != 0 || d >= dim) continue;
          keys[(kv_head * capacity + new_position) * dim + d] = static_cast<T>(new_k[e]);
          values[(kv_head * capacity + new_position) * dim + d] = static_cast<T>(new_v[e]);
        }
      }
    }
  } else {
    load_lane_values<T, E>(query + sequence_head * dim, j, dim, vector, q);
  }
#pragma unroll
  for (int e = 0; e < E; ++e) q[e] *= scale;
  const T* key_rows = keys + kv_head * capacity * dim;
  const T* value_rows = values + kv_head * capacity * dim;

  float running_max = -FLT_MAX, running_sum = 0.0f, acc[E] = {};
  // Rounds are uniform across the CTA (the 8-lane shuffles below need every lane of the warp); a group whose
  // position lies past the chunk's end takes part with a dead position.
  for (int64_t round = begin; round < end; round += kSplitGroups * kUnroll) {
    const int64_t first = round + gid;
    float k[kUnroll][E], v[kUnroll][E];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {  // every load first: kUnroll positions in flight per group
      const int64_t p = first + u * kSplitGroups;
      if (p >= end) continue;
      if (holds_new && p == new_position) {  // no CTA reads the cache at the position being written
#pragma unroll
        for (int e = 0; e < E; ++e) {
          k[u][e] = new_k[e];
          v[u][e] = new_v[e];
        }
      } else {
        load_lane_values<T, E>(key_rows + p * dim, j, dim, vector, k[u]);
        load_lane_values<T, E>(value_rows + p * dim, j, dim, vector, v[u]);
      }
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const bool live = first + u * kSplitGroups < end;  // uniform within the 8-lane group, not the warp
      float dot = 0.0f;
#pragma unroll
      for (int e = 0; e < E; ++e) dot += q[e] * (live ? k[u][e] : 0.0f);
      dot += __shfl_xor_sync(0xffffffffu, dot, 1);
      dot += __shfl_xor_sync(0xffffffffu, dot, 2);
      dot += __shfl_xor_sync(0xffffffffu, dot, 4);
      if (live) {
        const float new_max = fmaxf(running_max, dot);
        const float correction = expf(running_max - new_max), weight = expf(dot - new_max);
#pragma unroll
        for (int e = 0; e < E; ++e) acc[e] = acc[e] * correction + weight * v[u][e];
        running_sum = running_sum * correction + weight;
        running_max = new_max;
      }
    }
  }
  // Merge the groups: their states in shared memory, then one thread per dim.
  __shared__ float group_max[kSplitGroups], group_sum[kSplitGroups];
  __shared__ float group_acc[kSplitGroups][8 * E];
  if (j == 0) {
    group_max[gid] = running_max;
    group_sum[gid] = running_sum;
  }
#pragma unroll
  for (int e = 0; e < E; ++e) group_acc[gid][j * E + e] = acc[e];
  __syncthreads();
  float best = -FLT_MAX;
  for (int g = 0; g < kSplitGroups; ++g) best = fmaxf(best, group_max[g]);
  if (threadIdx.x == 0) {
    float total = 0.0f;
    for (int g = 0; g < kSplitGroups; ++g) total += group_sum[g] * expf(group_max[g] - best);
    partial[0] = best;
    partial[1] = total;
  }
  for (int d = threadIdx.x; d < dim; d += kSplitThreads) {
    float value = 0.0f;
    for (int g = 0; g < kSplitGroups; ++g) value += group_acc[g][d] * expf(group_max[g] - best);
    partial[2 + d] = value;
  }
}

// out[sequence, head] = the merged partial states of its splits (a split with sum 0 attended nothing, and its
// output was never written). The CTA first copies all its splits' states into shared memory, every load issued
// before any is used (one L2 round trip: reading the sums, then the maxima, then the outputs in batches took five,
// ~3 us of a SmolVLM-256M layer's 20 on the H100), then one thread per split weighs its state and one thread per
// dim sums the weighted outputs.
constexpr int kMergeLoads = 16;  // floats a thread loads before it stores any
// The states' bytes at most: the default limit of every device, 48 KiB, less 1 KiB for the kernel's static shared
// memory (656 bytes), which counts against the same limit (at head_dim 128 the full 48 KiB of states failed to
// launch).
constexpr int64_t kMergeStateBytes = 47 * 1024;

template <typename T>
__global__ void __launch_bounds__(kMaxSplits)
decode_attention_merge_kernel(const float* partials, T* out, int dim, int splits) {
  let_next_kernel_start();
  wait_for_previous_kernels(partials);
  extern __shared__ float states[];  // [splits][dim + 2]: max, sum, output
  const int64_t sequence_head = blockIdx.x;
  const int state_floats = dim + 2, total_floats = splits * state_floats;
  const float* source = partials + sequence_head * total_floats;
  for (int base = threadIdx.x; base < total_floats; base += kMaxSplits * kMergeLoads) {
    float staged[kMergeLoads];
#pragma unroll
    for (int u = 0; u < kMergeLoads; ++u) {
      const int i = base + u * kMaxSplits;
      staged[u] = i < total_floats ? source[i] : 0.0f;
    }
#pragma unroll
    for (int u = 0; u < kMergeLoads; ++u) {
      const int i = base + u * kMaxSplits;
      if (i < total_floats) states[i] = staged[u];
    }
  }
  __syncthreads();
  __shared__ float weight[kMaxSplits], warp_best[kMaxSplits / kWarpSize];
  const int s = threadIdx.x, warp = s / kWarpSize, lane = s % kWarpSize;
  const float sum = s < splits ? states[s * state_floats + 1] : 0.0f;
  const float max = sum > 0.0f ? states[s * state_floats] : -FLT_MAX;
  float best = max;
  for (int offset = kWarpSize / 2; offset > 0; offset >>= 1) best = fmaxf(best, __shfl_xor_sync(0xffffffffu, best, offset));
  if (lane == 0) warp_best[warp] = best;
  __syncthreads();
  best = -FLT_MAX;
  for (int w = 0; w < kMaxSplits / kWarpSize; ++w) best = fmaxf(best, warp_best[w]);
  weight[s] = sum > 0.0f ? expf(max - best) : 0.0f;
  const float total = cuda::block_sum(sum > 0.0f ? sum * weight[s] : 0.0f);  // block_sum synchronizes: weight is visible
  for (int d = threadIdx.x; d < dim; d += blockDim.x) {
    float value = 0.0f;
    for (int split = 0; split < splits; ++split) {
      if (weight[split] != 0.0f) value += states[split * state_floats + 2 + d] * weight[split];
    }
    out[sequence_head * dim + d] = static_cast<T>(value / total);
  }
}

// E, the dims each of a position's 8 lanes holds, for a head of `dim` (1 to 256).
int dims_per_lane(int64_t dim) { return dim <= 32 ? 4 : dim <= 64 ? 8 : dim <= 128 ? 16 : 32; }

// The split and merge kernels over keys, values [rows, kv_heads, capacity, dim] (contiguous; rows divides batch, and
// is batch with kNewToken) for `query` (contiguous [batch, heads, 1, dim]) or, with kNewToken, for the token's query
// (rotated or not; query undefined). `op` names the calling op in errors.
template <bool kNewToken, typename T>
void launch_decode_attention(const char* op, const at::Tensor& query, const at::Tensor& keys, const at::Tensor& values,
                             const NewToken<T>& token, const at::Tensor& position, double scale,
                             const at::Tensor& first, at::Tensor& out) {
  const int64_t batch = out.size(0), heads = out.size(1), dim = out.size(3), capacity = keys.size(2);
  TORCH_CHECK_VALUE(dim >= 1 && dim <= 8 * kWarpSize, op, ": head_dim must be 1 to 256 on CUDA, got ", dim);
  TORCH_CHECK(batch * heads < 65536, op, ": batch * heads above 65535");
  if (batch * heads == 0 || capacity == 0) return;
  const int64_t group = heads / keys.size(1), shared = batch / keys.size(0);
  // The split depends on the capacity only (not on the position, which lives on the device), and the merge stages
  // every split's state in shared memory: at most kMergeStateBytes.
  const int64_t splits =
      std::min<int64_t>({kMaxSplits, (capacity + 63) / 64, kMergeStateBytes / ((dim + 2) * int64_t{4})});
  const int64_t chunk = ((capacity + splits - 1) / splits + kSplitGroups - 1) / kSplitGroups * kSplitGroups;
  at::Tensor partials = at::empty({batch * heads * splits * (dim + 2)}, keys.options().dtype(at::kFloat));
  auto launch = [&](auto per_lane) {
    constexpr int E = decltype(per_lane)::value;
    constexpr int kPer = 16 / static_cast<int>(sizeof(T));
    const bool vector = E % kPer == 0 && dim % E == 0 && (dim * sizeof(T)) % 16 == 0 &&
                        (kNewToken || cuda::is_aligned_16(query.data_ptr())) && cuda::is_aligned_16(keys.data_ptr()) &&
                        cuda::is_aligned_16(values.data_ptr());
    launch_overlapped(&decode_attention_split_kernel<T, E, kNewToken>,
                      dim3(static_cast<unsigned>(splits), static_cast<unsigned>(batch * heads)), dim3(kSplitThreads), 0,
                      kNewToken ? nullptr : query.data_ptr<T>(), keys.data_ptr<T>(), values.data_ptr<T>(), token,
                      position.data_ptr<int64_t>(), first.defined() ? first.data_ptr<int64_t>() : nullptr,
                      partials.data_ptr<float>(), heads, group, shared, capacity, static_cast<int>(dim),
                      static_cast<float>(scale), static_cast<int>(chunk), static_cast<int>(splits), vector);
  };
  switch (dims_per_lane(dim)) {
    case 4: launch(std::integral_constant<int, 4>{}); break;
    case 8: launch(std::integral_constant<int, 8>{}); break;
    case 16: launch(std::integral_constant<int, 16>{}); break;
    default: launch(std::integral_constant<int, 32>{});
  }
  const size_t state_bytes = static_cast<size_t>(splits * (dim + 2)) * sizeof(float);
  launch_overlapped(&decode_attention_merge_kernel<T>, dim3(static_cast<unsigned>(batch * heads)), dim3(kMaxSplits),
                    state_bytes, partials.data_ptr<float>(), out.data_ptr<T>(), static_cast<int>(dim),
                    static_cast<int>(splits));
}

at::Tensor decode_attention_cuda(const at::Tensor& query_in, const at::Tensor& keys_in, const at::Tensor& values_in,
                                 const at::Tensor& position, double scale, const std::optional<at::Tensor>& first_in) {
  detail::check_decode_attention("decode_attention", query_in, keys_in, values_in, position, first_in);
  const c10::cuda::CUDAGuard guard(query_in.device());
  const at::Tensor query = query_in.contiguous(), keys = keys_in.contiguous(), values = values_in.contiguous();
  const at::Tensor first = first_in ? first_in->contiguous() : at::Tensor();
  at::Tensor out = at::empty(query.sizes(), query.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, query.scalar_type(), "decode_attention_cuda", [&] {
    launch_decode_attention<false, scalar_t>("decode_attention", query, keys, values, NewToken<scalar_t>{}, position,
                                             scale, first, out);
  });
  return out;
}

at::Tensor append_decode_attention_cuda(const at::Tensor& query, const at::Tensor& key, const at::Tensor& value,
                                        const at::Tensor& keys, const at::Tensor& values, const at::Tensor& position,
                                        double scale, const std::optional<at::Tensor>& cos_in,
                                        const std::optional<at::Tensor>& sin_in,
                                        const std::optional<at::Tensor>& first_in) {
  detail::check_append_decode_attention(query, key, value, keys, values, position, cos_in, sin_in, first_in);
  const c10::cuda::CUDAGuard guard(query.device());
  const at::Tensor cos = cos_in ? cos_in->contiguous() : at::Tensor(), sin = sin_in ? sin_in->contiguous() : at::Tensor();
  const at::Tensor first = first_in ? first_in->contiguous() : at::Tensor();
  at::Tensor out = at::empty(query.sizes(), query.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, query.scalar_type(), "append_decode_attention_cuda", [&] {
    const bool rotated = cos.defined();
    NewToken<scalar_t> token{query.data_ptr<scalar_t>(),
                             strides_of(query),
                             key.data_ptr<scalar_t>(),
                             strides_of(key),
                             value.data_ptr<scalar_t>(),
                             strides_of(value),
                             rotated ? cos.data_ptr<scalar_t>() : nullptr,
                             rotated ? sin.data_ptr<scalar_t>() : nullptr,
                             rotated && cos.size(0) != 1,
                             false};
    // 16-byte pieces: each lane's dims (and, rotated, their partners half a head away) start at multiples of 16
    // bytes.
    const int64_t dim = query.size(3), lane_dims = dims_per_lane(dim);
    constexpr int64_t kPer = 16 / sizeof(scalar_t);
    token.vector = lane_dims % kPer == 0 && dim % lane_dims == 0 && (!rotated || (dim / 2) % lane_dims == 0);
    for (const at::Tensor* t : {&query, &key, &value}) {
      token.vector = token.vector && t->stride(3) == 1 && t->stride(0) % kPer == 0 && t->stride(1) % kPer == 0 &&
                     cuda::is_aligned_16(t->data_ptr());
    }
    if (rotated) {
      token.vector = token.vector && cuda::is_aligned_16(cos.data_ptr()) && cuda::is_aligned_16(sin.data_ptr());
    }
    launch_decode_attention<true, scalar_t>("append_decode_attention", at::Tensor(), keys, values, token, position,
                                            scale, first, out);
  });
  return out;
}

// ---- reorder_cache_rows: one kernel for every cache of a beam-search step -------------------------------------
// A CTA takes one (cache, head, block of positions): it stages the block of every row in shared memory, gathered
// by `order` (rows may swap, so all are read before any is written), then writes them back in row order.
// Blocks past the position exit at once; the grid depends on the capacity only, so a CUDA graph records it.
constexpr int kReorderThreads = 256;
constexpr int kMaxReorderCaches = 64;  // caches a launch takes; more go in several launches
constexpr int64_t kReorderStagingBytes = 32 * 1024;
// Positions a CTA stages at most: fewer, more CTAs share the filled positions of an early step (the grid's
// CTAs past the position exit at once).
constexpr int64_t kReorderMaxPositions = 32;

struct CacheList {
  void* data[kMaxReorderCaches];
};

// Unit: the widest word that divides a position's row of head_dim values (16, 4 or 2 bytes).
template <typename Unit>
__global__ void __launch_bounds__(kReorderThreads)
reorder_cache_rows_kernel(CacheList caches, const int64_t* order, const int64_t* position, int batch, int64_t heads,
                          int64_t capacity, int64_t units_per_position, int64_t positions_per_cta) {
  let_next_kernel_start();
  Unit* cache = static_cast<Unit*>(caches.data[blockIdx.z]);
  wait_for_previous_kernels(cache, order, position);
  const int64_t filled = min(*position, capacity - 1) + 1;
  const int64_t begin = blockIdx.x * positions_per_cta;
  if (begin >= filled) return;
  const int64_t units = min(positions_per_cta, filled - begin) * units_per_position;  // a row's block
  const int64_t row_stride = heads * capacity * units_per_position;
  Unit* block = cache + (blockIdx.y * capacity + begin) * units_per_position;
  extern __shared__ uint4 staging_words[];
  Unit* staging = reinterpret_cast<Unit*>(staging_words);
  // A row that continues itself (order[row] == row, most rows of most steps) is neither staged nor written.
  for (int64_t i = threadIdx.x; i < batch * units; i += kReorderThreads) {
    const int64_t row = i / units, unit = i % units, source = order[row];
    CUDA_KERNEL_ASSERT(source >= 0 && source < batch && "reorder_cache_rows: order outside the batch");
    if (source != row) staging[i] = block[source * row_stride + unit];
  }
  __syncthreads();
  for (int64_t i = threadIdx.x; i < batch * units; i += kReorderThreads) {
    const int64_t row = i / units;
    if (order[row] != row) block[row * row_stride + i % units] = staging[i];
  }
}

void reorder_cache_rows_cuda(at::TensorList caches, const at::Tensor& order_in, const at::Tensor& position) {
  detail::check_reorder_cache_rows(caches, order_in, position);
  const at::Tensor& first = caches.front();
  const c10::cuda::CUDAGuard guard(first.device());
  const at::Tensor order = order_in.contiguous();
  const int64_t batch = first.size(0), heads = first.size(1), capacity = first.size(2);
  const int64_t row_bytes = first.size(3) * static_cast<int64_t>(first.element_size());
  if (batch == 0 || heads == 0 || capacity == 0 || row_bytes == 0) return;
  const int64_t positions_per_cta =
      std::min({capacity, kReorderMaxPositions, kReorderStagingBytes / (batch * row_bytes)});
  if (positions_per_cta == 0 || heads > 65535) {  // rows too wide to stage: the composition, cache by cache
    for (const at::Tensor& cache : caches) {
      cache.copy_(cache.index_select(0, order));  // every position: the filled part is known on the device only
    }
    return;
  }
  const size_t shared_bytes = static_cast<size_t>(batch * positions_per_cta * row_bytes);
  const dim3 block_grid(static_cast<unsigned>((capacity + positions_per_cta - 1) / positions_per_cta),
                        static_cast<unsigned>(heads));
  auto launch = [&](auto unit) {
    using Unit = decltype(unit);
    auto* kernel = &reorder_cache_rows_kernel<Unit>;
    const int64_t units_per_position = row_bytes / static_cast<int64_t>(sizeof(Unit));
    for (size_t start = 0; start < caches.size(); start += kMaxReorderCaches) {
      const size_t count = std::min<size_t>(kMaxReorderCaches, caches.size() - start);
      CacheList list{};
      for (size_t i = 0; i < count; ++i) list.data[i] = caches[start + i].data_ptr();
      launch_overlapped(kernel, dim3(block_grid.x, block_grid.y, static_cast<unsigned>(count)),
                        dim3(kReorderThreads), shared_bytes, list, order.data_ptr<int64_t>(),
                        position.data_ptr<int64_t>(), static_cast<int>(batch), heads, capacity, units_per_position,
                        positions_per_cta);
    }
  };
  auto all_aligned = [&](uintptr_t bytes) {
    return std::all_of(caches.begin(), caches.end(),
                       [&](const at::Tensor& c) { return reinterpret_cast<uintptr_t>(c.data_ptr()) % bytes == 0; });
  };
  if (row_bytes % 16 == 0 && all_aligned(16)) {
    launch(uint4{});
  } else if (row_bytes % 4 == 0 && all_aligned(4)) {
    launch(uint32_t{});
  } else {
    launch(uint16_t{});  // 16-bit values: an odd head_dim, or a cache at an odd offset
  }
}

}  // namespace
}  // namespace imagetotext::ops

TORCH_LIBRARY_IMPL(imagetotext, CUDA, m) {
  m.impl("rms_norm", &imagetotext::ops::rms_norm_cuda);
  m.impl("rotary", &imagetotext::ops::rotary_cuda);
  m.impl("silu_mul", &imagetotext::ops::silu_mul_cuda);
  m.impl("decode_attention", &imagetotext::ops::decode_attention_cuda);
  m.impl("append_decode_attention", &imagetotext::ops::append_decode_attention_cuda);
  m.impl("reorder_cache_rows", &imagetotext::ops::reorder_cache_rows_cuda);
}
