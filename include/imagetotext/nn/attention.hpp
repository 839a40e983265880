// Attention pieces every family shares: a key/value cache allocated once per request at its final size
// (fixed shapes, no allocation per decode step, so the step can be captured in a CUDA graph), and
// scaled dot-product attention through PyTorch's fused kernels (flash / memory-efficient / math).
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <optional>
#include <utility>

namespace imagetotext::nn {

// Keys and values of one attention layer for `batch` sequences (beams count as sequences) of up to
// `capacity` positions: [batch, kv_heads, capacity, head_dim] each, filled from position 0.
class KVCache {
 public:
  KVCache() = default;
  KVCache(std::int64_t batch, std::int64_t kv_heads, std::int64_t capacity, std::int64_t head_dim,
          const at::TensorOptions& options);

  // Writes `key`/`value` [batch, kv_heads, new, head_dim] at positions [length, length + new) and returns
  // views of the filled part [.., 0 : length + new, ..]. Throws InvalidArgumentError past capacity.
  std::pair<at::Tensor, at::Tensor> append(const at::Tensor& key, const at::Tensor& value);

  // A decode step at a position held on the device (fixed shapes, so a CUDA graph can replay it): writes
  // `key`/`value` [batch, kv_heads, 1, head_dim] at `position` (int64 [1] on the cache's device) and returns the
  // attention of `query` [batch, heads, 1, head_dim] over positions 0 .. position (from first[b] on for row b of a
  // left-padded batch), as ops::append_decode_attention (one pass of the attention kernels on CUDA). A rotary
  // model passes cos, sin [1 or batch, head_dim]: the key is written rotated and the query attends rotated.
  // length() is not advanced: the host does not know the position.
  at::Tensor attend_at(const at::Tensor& query, const at::Tensor& key, const at::Tensor& value,
                       const at::Tensor& position, double scale, const std::optional<at::Tensor>& cos = std::nullopt,
                       const std::optional<at::Tensor>& sin = std::nullopt,
                       const std::optional<at::Tensor>& first = std::nullopt);

  // Beam search: sequence i continues sequence `order[i]` (an int64 tensor on the cache's device). Fixed-shape
  // caches, whose filled part only the device knows, move with ops::reorder_cache_rows.
  void reorder(const at::Tensor& order);

  void clear() noexcept { length_ = 0; }
  std::int64_t length() const noexcept { return length_; }
  std::int64_t capacity() const noexcept { return keys_.defined() ? keys_.size(2) : 0; }
  // The whole buffers (for kernels that read the cache in place, with their own length).
  const at::Tensor& keys() const noexcept { return keys_; }
  const at::Tensor& values() const noexcept { return values_; }

 private:
  at::Tensor keys_;
  at::Tensor values_;
  std::int64_t length_ = 0;
};

// softmax(q k^T * scale + mask) v for q [batch, heads, q_len, head_dim] and k, v [batch, kv_heads, k_len,
// head_dim]; grouped-query attention repeats each key/value head heads / kv_heads times. `mask` is
// additive (0 or -inf) or boolean (true = attend), broadcastable to [batch, heads, q_len, k_len].
// `causal` masks position j > i + (k_len - q_len). scale defaults to 1/sqrt(head_dim). On the CPU a single
// query row without a mask (a decode step) takes matmul + float32 softmax + matmul instead of ATen's flash kernel.
at::Tensor scaled_dot_product_attention(const at::Tensor& query, const at::Tensor& key, const at::Tensor& value,
                                        const std::optional<at::Tensor>& mask = std::nullopt, bool causal = false,
                                        std::optional<double> scale = std::nullopt);

}  // namespace imagetotext::nn
