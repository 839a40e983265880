// CUDA kernels of the fused layer ops (src/ops/layer_ops.hpp). Each replaces several ATen launches in a
// decode step; the rounding follows the ATen composition (float math, rounded to the dtype where ATen's
// elementwise ops round), so results differ from the CPU side only in the order of float32 sums.
#include <ATen/Dispatch.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <cfloat>

#include "../layer_ops.hpp"
#include "blockwise.cuh"

namespace imagetotext::ops {
namespace {

using cuda::current_stream;
using cuda::kWarpSize;

template <typename T>
__device__ __forceinline__ float rounded(float v) {
  return static_cast<float>(static_cast<T>(v));
}

__device__ __forceinline__ float cta_sum(float v) {
  __shared__ float partial[32];
  const int warp = threadIdx.x / kWarpSize, lane = threadIdx.x % kWarpSize;
  v = cuda::warp_sum(v);
  __syncthreads();
  if (lane == 0) partial[warp] = v;
  __syncthreads();
  v = lane < static_cast<int>(blockDim.x / kWarpSize) ? partial[lane] : 0.0f;
  return cuda::warp_sum(v);
}

// ---- rms_norm: one CTA per row --------------------------------------------------------------------------------
// Rows of up to kRmsCached * blockDim.x values are read once (kept in registers); longer rows read twice.
constexpr int kRmsCached = 8;

template <typename T>
__global__ void rms_norm_kernel(const T* __restrict__ x, const T* __restrict__ weight, T* __restrict__ out,
                                int64_t n, float eps) {
  const T* row = x + blockIdx.x * n;
  T* out_row = out + blockIdx.x * n;
  float cached[kRmsCached];
  float squares = 0.0f;
#pragma unroll
  for (int c = 0; c < kRmsCached; ++c) {
    const int64_t i = threadIdx.x + c * static_cast<int64_t>(blockDim.x);
    cached[c] = i < n ? static_cast<float>(row[i]) : 0.0f;
    squares += cached[c] * cached[c];
  }
  for (int64_t i = threadIdx.x + kRmsCached * static_cast<int64_t>(blockDim.x); i < n; i += blockDim.x) {
    const float v = static_cast<float>(row[i]);
    squares += v * v;
  }
  const float inverse = rsqrtf(cta_sum(squares) / static_cast<float>(n) + eps);
#pragma unroll
  for (int c = 0; c < kRmsCached; ++c) {
    const int64_t i = threadIdx.x + c * static_cast<int64_t>(blockDim.x);
    if (i < n) out_row[i] = static_cast<T>(static_cast<float>(weight[i]) * rounded<T>(cached[c] * inverse));
  }
  for (int64_t i = threadIdx.x + kRmsCached * static_cast<int64_t>(blockDim.x); i < n; i += blockDim.x) {
    const float normed = rounded<T>(static_cast<float>(row[i]) * inverse);
    out_row[i] = static_cast<T>(static_cast<float>(weight[i]) * normed);
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
    rms_norm_kernel<scalar_t><<<rows, threads, 0, current_stream()>>>(
        x.data_ptr<scalar_t>(), weight.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(), n, static_cast<float>(eps));
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

// ---- rotary: one thread per output element of a contiguous [batch, heads, length, dim] ------------------------
struct Strides4 {
  int64_t size[4];
  int64_t stride[4];
};

template <typename T>
__global__ void rotary_kernel(const T* __restrict__ x, Strides4 xs, const T* __restrict__ cos_table,
                              const T* __restrict__ sin_table, int64_t table_row, T* __restrict__ out, int64_t total) {
  const int64_t dim = xs.size[3], half = dim / 2, length = xs.size[2], heads = xs.size[1];
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t d = i % dim, t = (i / dim) % length, h = (i / (dim * length)) % heads, b = i / (dim * length * heads);
    const T* base = x + b * xs.stride[0] + h * xs.stride[1] + t * xs.stride[2];
    const float value = static_cast<float>(base[d * xs.stride[3]]);
    const float partner = d < half ? -static_cast<float>(base[(d + half) * xs.stride[3]])
                                   : static_cast<float>(base[(d - half) * xs.stride[3]]);
    const float c = static_cast<float>(cos_table[t * table_row + d]), s = static_cast<float>(sin_table[t * table_row + d]);
    out[i] = static_cast<T>(rounded<T>(value * c) + rounded<T>(partner * s));
  }
}

at::Tensor rotary_cuda(const at::Tensor& x, const at::Tensor& cos_in, const at::Tensor& sin_in) {
  detail::check_rotary(x, cos_in, sin_in);
  const c10::cuda::CUDAGuard guard(x.device());
  const at::Tensor cos = cos_in.contiguous(), sin = sin_in.contiguous();
  at::Tensor out = at::empty(x.sizes(), x.options());
  const int64_t total = x.numel();
  if (total == 0) return out;
  Strides4 xs{};
  for (int i = 0; i < 4; ++i) {
    xs.size[i] = x.size(i);
    xs.stride[i] = x.stride(i);
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "rotary_cuda", [&] {
    rotary_kernel<scalar_t><<<cuda::cta_count(total, cuda::kThreads), cuda::kThreads, 0, current_stream()>>>(
        x.data_ptr<scalar_t>(), xs, cos.data_ptr<scalar_t>(), sin.data_ptr<scalar_t>(), cos.size(1),
        out.data_ptr<scalar_t>(), total);
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

// ---- silu_mul --------------------------------------------------------------------------------------------------
template <typename T>
__global__ void silu_mul_kernel(const T* __restrict__ gate, const T* __restrict__ up, T* __restrict__ out, int64_t total) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const float g = static_cast<float>(gate[i]);
    out[i] = static_cast<T>(rounded<T>(g / (1.0f + expf(-g))) * static_cast<float>(up[i]));
  }
}

at::Tensor silu_mul_cuda(const at::Tensor& gate_in, const at::Tensor& up_in) {
  detail::check_silu_mul(gate_in, up_in);
  const c10::cuda::CUDAGuard guard(gate_in.device());
  const at::Tensor gate = gate_in.contiguous(), up = up_in.contiguous();
  at::Tensor out = at::empty_like(gate);
  const int64_t total = gate.numel();
  if (total == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, gate.scalar_type(), "silu_mul_cuda", [&] {
    silu_mul_kernel<scalar_t><<<cuda::cta_count(total, cuda::kThreads), cuda::kThreads, 0, current_stream()>>>(
        gate.data_ptr<scalar_t>(), up.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(), total);
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

// ---- decode_attention: one CTA per (sequence, head) -----------------------------------------------------------
// kAttentionWarps warps split the positions 0 .. position between them (warp w takes w, w + warps, ...), each
// with an online softmax; lane l holds dims l, l + 32, ... (V of them). Keys and values of kAttentionUnroll
// positions are loaded before any is used, so a warp keeps several loads in flight. The warps merge in shared
// memory at the end.
constexpr int kAttentionWarps = 16;
constexpr int kAttentionUnroll = 4;

template <typename T, int V>
__global__ void __launch_bounds__(kAttentionWarps * 32)
decode_attention_kernel(const T* __restrict__ query, const T* __restrict__ keys, const T* __restrict__ values,
                        const int64_t* __restrict__ position, const int64_t* __restrict__ first_position,
                        T* __restrict__ out, int64_t heads, int64_t group, int64_t capacity, int dim, float scale) {
  const int64_t sequence_head = blockIdx.x, sequence = sequence_head / heads, head = sequence_head % heads;
  const int warp = threadIdx.x / kWarpSize, lane = threadIdx.x % kWarpSize;
  const int64_t filled = min(*position, capacity - 1) + 1;
  // A left-padded row starts at its first real position (the positions before it are padding).
  const int64_t start = first_position ? max(first_position[sequence], int64_t{0}) : 0;

  float q[V];
  const T* q_row = query + sequence_head * dim;
  for (int v = 0; v < V; ++v) {
    const int d = v * kWarpSize + lane;
    q[v] = d < dim ? static_cast<float>(q_row[d]) * scale : 0.0f;
  }
  const int64_t kv_base = (sequence * (heads / group) + head / group) * capacity * dim;
  float running_max = -FLT_MAX, running_sum = 0.0f, acc[V] = {};
  for (int64_t first = start + warp; first < filled; first += kAttentionWarps * kAttentionUnroll) {
    float k[kAttentionUnroll][V], val[kAttentionUnroll][V];
#pragma unroll
    for (int u = 0; u < kAttentionUnroll; ++u) {
      const int64_t p = first + u * kAttentionWarps;
      for (int v = 0; v < V; ++v) {
        const int d = v * kWarpSize + lane;
        const bool live = p < filled && d < dim;
        k[u][v] = live ? static_cast<float>(keys[kv_base + p * dim + d]) : 0.0f;
        val[u][v] = live ? static_cast<float>(values[kv_base + p * dim + d]) : 0.0f;
      }
    }
#pragma unroll
    for (int u = 0; u < kAttentionUnroll; ++u) {
      if (first + u * kAttentionWarps >= filled) break;
      float dot = 0.0f;
      for (int v = 0; v < V; ++v) dot += q[v] * k[u][v];
      const float score = cuda::warp_sum(dot);
      const float new_max = fmaxf(running_max, score);
      const float correction = expf(running_max - new_max), weight = expf(score - new_max);
      for (int v = 0; v < V; ++v) acc[v] = acc[v] * correction + weight * val[u][v];
      running_sum = running_sum * correction + weight;
      running_max = new_max;
    }
  }
  __shared__ float warp_max[kAttentionWarps], warp_sum[kAttentionWarps];
  __shared__ float warp_acc[kAttentionWarps][V * kWarpSize];
  if (lane == 0) {
    warp_max[warp] = running_max;
    warp_sum[warp] = running_sum;
  }
  for (int v = 0; v < V; ++v) warp_acc[warp][v * kWarpSize + lane] = acc[v];
  __syncthreads();
  float best = -FLT_MAX;
  for (int w = 0; w < kAttentionWarps; ++w) best = fmaxf(best, warp_max[w]);
  float total = 0.0f;
  for (int w = 0; w < kAttentionWarps; ++w) total += warp_sum[w] * expf(warp_max[w] - best);
  for (int d = threadIdx.x; d < dim; d += blockDim.x) {
    float value = 0.0f;
    for (int w = 0; w < kAttentionWarps; ++w) value += warp_acc[w][d] * expf(warp_max[w] - best);
    out[sequence_head * dim + d] = static_cast<T>(value / total);
  }
}

at::Tensor decode_attention_cuda(const at::Tensor& query_in, const at::Tensor& keys_in, const at::Tensor& values_in,
                                 const at::Tensor& position, double scale, const std::optional<at::Tensor>& first_in) {
  detail::check_decode_attention(query_in, keys_in, values_in, position, first_in);
  const int64_t dim = query_in.size(3);
  TORCH_CHECK_VALUE(dim >= 1 && dim <= 8 * kWarpSize, "decode_attention: head_dim must be 1 to 256 on CUDA, got ", dim);
  const c10::cuda::CUDAGuard guard(query_in.device());
  const at::Tensor query = query_in.contiguous(), keys = keys_in.contiguous(), values = values_in.contiguous();
  const int64_t batch = query.size(0), heads = query.size(1), capacity = keys.size(2);
  const int64_t group = heads / keys.size(1);
  const at::Tensor first = first_in ? first_in->contiguous() : at::Tensor();
  at::Tensor out = at::empty(query.sizes(), query.options());
  if (batch * heads == 0 || capacity == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, query.scalar_type(), "decode_attention_cuda", [&] {
    auto launch = [&](auto per_lane) {
      constexpr int V = decltype(per_lane)::value;
      decode_attention_kernel<scalar_t, V><<<static_cast<unsigned>(batch * heads), kAttentionWarps * kWarpSize, 0,
                                             current_stream()>>>(
          query.data_ptr<scalar_t>(), keys.data_ptr<scalar_t>(), values.data_ptr<scalar_t>(),
          position.data_ptr<int64_t>(), first.defined() ? first.data_ptr<int64_t>() : nullptr,
          out.data_ptr<scalar_t>(), heads, group, capacity, static_cast<int>(dim),
          static_cast<float>(scale));
    };
    switch ((dim + kWarpSize - 1) / kWarpSize) {
      case 1: launch(std::integral_constant<int, 1>{}); break;
      case 2: launch(std::integral_constant<int, 2>{}); break;
      case 3: case 4: launch(std::integral_constant<int, 4>{}); break;
      default: launch(std::integral_constant<int, 8>{}); break;
    }
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

}  // namespace
}  // namespace imagetotext::ops

TORCH_LIBRARY_IMPL(imagetotext, CUDA, m) {
  m.impl("rms_norm", &imagetotext::ops::rms_norm_cuda);
  m.impl("rotary", &imagetotext::ops::rotary_cuda);
  m.impl("silu_mul", &imagetotext::ops::silu_mul_cuda);
  m.impl("decode_attention", &imagetotext::ops::decode_attention_cuda);
}
