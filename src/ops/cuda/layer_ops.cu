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
template <typename T>
__global__ void rms_norm_kernel(const T* __restrict__ x, const T* __restrict__ weight, T* __restrict__ out,
                                int64_t n, float eps) {
  const T* row = x + blockIdx.x * n;
  T* out_row = out + blockIdx.x * n;
  float squares = 0.0f;
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) {
    const float v = static_cast<float>(row[i]);
    squares += v * v;
  }
  const float inverse = rsqrtf(cta_sum(squares) / static_cast<float>(n) + eps);
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) {
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

// ---- decode_attention: split over positions (flash-decoding), then one combine per head -----------------------
// Pass 1: CTA (sequence * head, split) of kAttentionWarps warps covers positions [split * kSplitPositions, ...)
// up to `position`; each warp walks its share with an online softmax (lane l holds dims l*V .. l*V+V-1), the
// warps merge in shared memory and the CTA writes (max, sum, weighted values) for its split.
constexpr int kAttentionWarps = 4;
constexpr int64_t kSplitPositions = 64;

template <typename T, int V>
__global__ void decode_attention_split_kernel(const T* __restrict__ query, const T* __restrict__ keys,
                                              const T* __restrict__ values, const int64_t* __restrict__ position,
                                              float* __restrict__ partial, int64_t heads, int64_t group,
                                              int64_t capacity, float scale) {
  constexpr int dim = V * kWarpSize;
  const int64_t sequence_head = blockIdx.x, split = blockIdx.y, splits = gridDim.y;
  const int64_t sequence = sequence_head / heads, head = sequence_head % heads, kv_head = head / group;
  const int warp = threadIdx.x / kWarpSize, lane = threadIdx.x % kWarpSize;
  const int64_t last = min(*position, capacity - 1);
  const int64_t begin = split * kSplitPositions, end = min(begin + kSplitPositions, last + 1);

  float q[V];
  const T* q_row = query + sequence_head * dim;
  for (int v = 0; v < V; ++v) q[v] = static_cast<float>(q_row[lane * V + v]) * scale;
  const int64_t kv_base = (sequence * (heads / group) + kv_head) * capacity * dim;
  float running_max = -FLT_MAX, running_sum = 0.0f, acc[V] = {};
  for (int64_t p = begin + warp; p < end; p += kAttentionWarps) {
    const T* k_row = keys + kv_base + p * dim;
    float dot = 0.0f;
    for (int v = 0; v < V; ++v) dot += q[v] * static_cast<float>(k_row[lane * V + v]);
    const float score = cuda::warp_sum(dot);
    const float new_max = fmaxf(running_max, score);
    const float correction = expf(running_max - new_max), weight = expf(score - new_max);
    const T* v_row = values + kv_base + p * dim;
    for (int v = 0; v < V; ++v) acc[v] = acc[v] * correction + weight * static_cast<float>(v_row[lane * V + v]);
    running_sum = running_sum * correction + weight;
    running_max = new_max;
  }
  __shared__ float warp_max[kAttentionWarps], warp_sum[kAttentionWarps];
  __shared__ float warp_acc[kAttentionWarps][dim];
  if (lane == 0) {
    warp_max[warp] = running_max;
    warp_sum[warp] = running_sum;
  }
  for (int v = 0; v < V; ++v) warp_acc[warp][lane * V + v] = acc[v];
  __syncthreads();
  if (warp != 0) return;
  float cta_max = -FLT_MAX;
  for (int w = 0; w < kAttentionWarps; ++w) cta_max = fmaxf(cta_max, warp_max[w]);
  float* out = partial + (sequence_head * splits + split) * (dim + 2);
  float total = 0.0f;
  for (int v = 0; v < V; ++v) {
    float value = 0.0f;
    for (int w = 0; w < kAttentionWarps; ++w) value += warp_acc[w][lane * V + v] * expf(warp_max[w] - cta_max);
    out[2 + lane * V + v] = value;
  }
  for (int w = 0; w < kAttentionWarps; ++w) total += warp_sum[w] * expf(warp_max[w] - cta_max);
  if (lane == 0) {
    out[0] = cta_max;
    out[1] = total;  // zero for a split past `position`
  }
}

template <typename T>
__global__ void decode_attention_combine_kernel(const float* __restrict__ partial, T* __restrict__ out, int64_t splits,
                                                int64_t dim) {
  const float* rows = partial + blockIdx.x * splits * (dim + 2);
  float best = -FLT_MAX;
  for (int64_t s = 0; s < splits; ++s) {
    if (rows[s * (dim + 2) + 1] > 0.0f) best = fmaxf(best, rows[s * (dim + 2)]);
  }
  for (int64_t d = threadIdx.x; d < dim; d += blockDim.x) {
    float value = 0.0f, total = 0.0f;
    for (int64_t s = 0; s < splits; ++s) {
      const float* row = rows + s * (dim + 2);
      if (row[1] <= 0.0f) continue;
      const float factor = expf(row[0] - best);
      value += row[2 + d] * factor;
      total += row[1] * factor;
    }
    out[blockIdx.x * dim + d] = static_cast<T>(value / total);
  }
}

at::Tensor decode_attention_cuda(const at::Tensor& query_in, const at::Tensor& keys_in, const at::Tensor& values_in,
                                 const at::Tensor& position, double scale) {
  detail::check_decode_attention(query_in, keys_in, values_in, position);
  const int64_t dim = query_in.size(3);
  TORCH_CHECK_VALUE(dim % kWarpSize == 0 && dim <= 8 * kWarpSize,
                    "decode_attention: head_dim must be a multiple of 32 up to 256 on CUDA, got ", dim);
  const c10::cuda::CUDAGuard guard(query_in.device());
  const at::Tensor query = query_in.contiguous(), keys = keys_in.contiguous(), values = values_in.contiguous();
  const int64_t batch = query.size(0), heads = query.size(1), capacity = keys.size(2);
  const int64_t group = heads / keys.size(1);
  at::Tensor out = at::empty(query.sizes(), query.options());
  if (batch * heads == 0 || capacity == 0) return out;
  const int64_t splits = (capacity + kSplitPositions - 1) / kSplitPositions;
  at::Tensor partial = at::empty({batch * heads, splits, dim + 2}, query.options().dtype(at::kFloat));
  const dim3 grid(static_cast<unsigned>(batch * heads), static_cast<unsigned>(splits));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, query.scalar_type(), "decode_attention_cuda", [&] {
    auto launch = [&](auto per_lane) {
      constexpr int V = decltype(per_lane)::value;
      decode_attention_split_kernel<scalar_t, V><<<grid, kAttentionWarps * kWarpSize, 0, current_stream()>>>(
          query.data_ptr<scalar_t>(), keys.data_ptr<scalar_t>(), values.data_ptr<scalar_t>(),
          position.data_ptr<int64_t>(), partial.data_ptr<float>(), heads, group, capacity, static_cast<float>(scale));
    };
    switch (dim / kWarpSize) {
      case 1: launch(std::integral_constant<int, 1>{}); break;
      case 2: launch(std::integral_constant<int, 2>{}); break;
      case 3: launch(std::integral_constant<int, 3>{}); break;
      case 4: launch(std::integral_constant<int, 4>{}); break;
      case 5: launch(std::integral_constant<int, 5>{}); break;
      case 6: launch(std::integral_constant<int, 6>{}); break;
      case 7: launch(std::integral_constant<int, 7>{}); break;
      default: launch(std::integral_constant<int, 8>{}); break;
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    decode_attention_combine_kernel<scalar_t><<<static_cast<unsigned>(batch * heads), 128, 0, current_stream()>>>(
        partial.data_ptr<float>(), out.data_ptr<scalar_t>(), splits, dim);
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
