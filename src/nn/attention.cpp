#include "imagetotext/nn/attention.hpp"

#include <ATen/ops/empty.h>
#include <ATen/ops/matmul.h>
#include <ATen/ops/ones.h>
#include <ATen/ops/zeros.h>
#include <ATen/ops/scaled_dot_product_attention.h>
#include <ATen/ops/softmax.h>
#include <fmt/format.h>

#include <cmath>
#include <limits>

#include "../ops/layer_ops.hpp"
#include "imagetotext/core/error.hpp"

namespace imagetotext::nn {

KVCache::KVCache(std::int64_t batch, std::int64_t kv_heads, std::int64_t capacity, std::int64_t head_dim,
                 const at::TensorOptions& options)
    // Zeros, not uninitialised memory: a fixed-shape step reads the whole buffer with the unfilled part masked,
    // and a NaN there would survive the mask (0 * NaN).
    : keys_(at::zeros({batch, kv_heads, capacity, head_dim}, options)),
      values_(at::zeros({batch, kv_heads, capacity, head_dim}, options)) {}

std::pair<at::Tensor, at::Tensor> KVCache::append(const at::Tensor& key, const at::Tensor& value) {
  const std::int64_t added = key.size(2);
  if (length_ + added > capacity()) {
    throw InvalidArgumentError(
        fmt::format("key/value cache holds {} positions; {} + {} do not fit", capacity(), length_, added));
  }
  keys_.narrow(2, length_, added).copy_(key);
  values_.narrow(2, length_, added).copy_(value);
  length_ += added;
  return {keys_.narrow(2, 0, length_), values_.narrow(2, 0, length_)};
}

at::Tensor KVCache::attend_at(const at::Tensor& query, const at::Tensor& key, const at::Tensor& value,
                             const at::Tensor& position, double scale, const std::optional<at::Tensor>& cos,
                             const std::optional<at::Tensor>& sin, const std::optional<at::Tensor>& first) {
  return ops::append_decode_attention(query, key, value, keys_, values_, position, scale, cos, sin, first);
}

void KVCache::reorder(const at::Tensor& order) {
  // index_select allocates; beams are few and this runs once per step, so the copy back is cheap. Only the
  // filled positions move: a cache sized for a 1024-token caption is mostly empty early on.
  if (length_ == 0) return;
  at::Tensor keys = keys_.narrow(2, 0, length_), values = values_.narrow(2, 0, length_);
  keys.copy_(keys.index_select(0, order));
  values.copy_(values.index_select(0, order));
}

namespace {
// One query row per sequence and head (a decode step) on the CPU, as two matmuls and a float32 softmax: ATen's
// CPU flash kernel spends milliseconds per call on this shape (3.8 ms for 3 beams x 590 keys in bfloat16 against
// 0.7 ms here; benchmarks/results/cpu-*.md). The heads sharing a key/value head are stacked as that head's query
// rows, so each key and value is read once. The query sees every key, so `causal` changes nothing. In bfloat16 /
// float16 the scores are rounded to that dtype before the softmax, as transformers' eager attention does.
//
// Sequences that share their keys and values (an image's beams: keys and values expanded over the batch, stride
// 0) are stacked as query rows too, so the matmuls read each key and value once instead of copying them per
// sequence first (at::matmul cannot fold a stride-0 batch into a view: 17 % of a Florence-2 CPU step).
at::Tensor single_query_attention(const at::Tensor& query, const at::Tensor& key, const at::Tensor& value,
                                  std::optional<double> scale) {
  const std::int64_t batch = query.size(0), heads = query.size(1), head_dim = query.size(3);
  const std::int64_t kv_heads = key.size(1), group = heads / kv_heads;
  const double factor = scale.value_or(1.0 / std::sqrt(static_cast<double>(head_dim)));
  const bool shared = batch > 1 && key.stride(0) == 0 && value.stride(0) == 0;
  // The query rows that read the same keys, side by side: [kv_heads, batch * group, head_dim] when the sequences
  // share them, else [batch, kv_heads, group, head_dim].
  const at::Tensor rows = shared ? query.reshape({batch, kv_heads, group, head_dim})
                                       .permute({1, 0, 2, 3})
                                       .reshape({kv_heads, batch * group, head_dim})
                                 : query.reshape({batch, kv_heads, group, head_dim});
  const at::Tensor keys = shared ? key.select(0, 0) : key, values = shared ? value.select(0, 0) : value;
  const at::Tensor scores = at::matmul(rows, keys.transpose(-1, -2)).mul_(factor);
  const at::Tensor weights = at::softmax(scores, -1, at::kFloat).to(value.scalar_type());
  const at::Tensor out = at::matmul(weights, values);
  if (!shared) return out.reshape({batch, heads, 1, value.size(3)});
  return out.view({kv_heads, batch, group, value.size(3)})
      .permute({1, 0, 2, 3})
      .reshape({batch, heads, 1, value.size(3)});
}
}  // namespace

at::Tensor scaled_dot_product_attention(const at::Tensor& query, const at::Tensor& key, const at::Tensor& value,
                                        const std::optional<at::Tensor>& mask, bool causal,
                                        std::optional<double> scale) {
  if (query.device().is_cpu() && query.size(2) == 1 && !mask && key.size(1) > 0 &&
      query.size(1) % key.size(1) == 0) {
    return single_query_attention(query, key, value, scale);
  }
  std::optional<at::Tensor> attn_mask = mask;
  if (causal) {
    const std::int64_t q_len = query.size(2);
    const std::int64_t k_len = key.size(2);
    if (q_len == k_len && !mask) {
      return at::scaled_dot_product_attention(query, key, value, std::nullopt, 0.0, /*is_causal=*/true, scale,
                                              /*enable_gqa=*/key.size(1) != query.size(1));
    }
    // Queries sit at the end of the key sequence (decoding with a cache): query i sees keys 0 .. i + offset.
    const at::Tensor allowed =
        at::ones({q_len, k_len}, query.options().dtype(at::kBool)).tril(k_len - q_len);
    if (!attn_mask) {
      attn_mask = allowed;
    } else if (attn_mask->scalar_type() == at::kBool) {
      attn_mask = attn_mask->logical_and(allowed);
    } else {
      attn_mask = attn_mask->masked_fill(allowed.logical_not(), -std::numeric_limits<float>::infinity());
    }
  }
  return at::scaled_dot_product_attention(query, key, value, attn_mask, 0.0, /*is_causal=*/false, scale,
                                          /*enable_gqa=*/key.size(1) != query.size(1));
}

}  // namespace imagetotext::nn
