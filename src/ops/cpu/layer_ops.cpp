// The CPU side of the fused layer ops: the ATen compositions the layers were written with (the oracle tests
// hold them to transformers), so routing the layers through these ops changes no CPU result.
#include <ATen/ops/arange.h>
#include <ATen/ops/cat.h>
#include <ATen/ops/rsqrt.h>
#include <ATen/ops/scaled_dot_product_attention.h>
#include <ATen/ops/silu.h>
#include <torch/library.h>

#include <algorithm>

#include "../layer_ops.hpp"

namespace imagetotext::ops {
namespace {

at::Tensor rms_norm_cpu(const at::Tensor& x, const at::Tensor& weight, double eps) {
  detail::check_rms_norm(x, weight);
  const at::Tensor x32 = x.to(at::kFloat);
  const at::Tensor normed = x32 * at::rsqrt(x32.pow(2).mean(-1, /*keepdim=*/true) + eps);
  return weight * normed.to(x.scalar_type());
}

// x * cos + rotate_half(x) * sin; cos and sin broadcast against x.
at::Tensor rotate(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin) {
  const int64_t half = x.size(-1) / 2;
  const at::Tensor rotated = at::cat({-x.narrow(-1, half, half), x.narrow(-1, 0, half)}, -1);
  return x * cos + rotated * sin;
}

at::Tensor rotary_cpu(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin) {
  detail::check_rotary(x, cos, sin);
  return rotate(x, cos, sin);
}

at::Tensor silu_mul_cpu(const at::Tensor& gate, const at::Tensor& up) {
  detail::check_silu_mul(gate, up);
  return at::silu(gate) * up;
}

at::Tensor decode_attention_cpu(const at::Tensor& query, const at::Tensor& keys, const at::Tensor& values,
                                const at::Tensor& position, double scale, const std::optional<at::Tensor>& first) {
  detail::check_decode_attention("decode_attention", query, keys, values, position, first);
  const int64_t batch = query.size(0), heads = query.size(1), kv_heads = keys.size(1), head_dim = query.size(3);
  const int64_t rows = keys.size(0), shared = rows > 0 ? batch / rows : 1, group = heads / kv_heads;
  // On the CPU the position is at hand: attend to the filled part only (whatever lies past it never enters).
  const int64_t filled = std::min(position.item<int64_t>(), keys.size(2) - 1) + 1;
  TORCH_CHECK_VALUE(filled > 0, "decode_attention: position must not be negative");
  // The queries that read one key/value head (the heads sharing it, of every sequence sharing its row) become that
  // head's query rows, [rows, kv_heads, shared * group, head_dim]: the cache is read as it is.
  const at::Tensor grouped = query.reshape({rows, shared, kv_heads, group, head_dim})
                                 .permute({0, 2, 1, 3, 4})
                                 .reshape({rows, kv_heads, shared * group, head_dim});
  std::optional<at::Tensor> mask;  // [rows, 1, shared * group, filled]: true from each sequence's first position on
  if (first) {
    mask = at::arange(filled, first->options())
               .view({1, 1, 1, filled})
               .ge(first->view({rows, shared, 1, 1}))
               .expand({rows, shared, group, filled})
               .reshape({rows, 1, shared * group, filled});
  }
  return at::scaled_dot_product_attention(grouped, keys.narrow(2, 0, filled), values.narrow(2, 0, filled), mask,
                                          0.0, false, scale)
      .reshape({rows, kv_heads, shared, group, head_dim})
      .permute({0, 2, 1, 3, 4})
      .reshape({batch, heads, 1, head_dim});
}

// (rotary +) index_copy_ + decode_attention_cpu.
at::Tensor append_decode_attention_cpu(const at::Tensor& query, const at::Tensor& key, const at::Tensor& value,
                                       const at::Tensor& keys, const at::Tensor& values, const at::Tensor& position,
                                       double scale, const std::optional<at::Tensor>& cos,
                                       const std::optional<at::Tensor>& sin, const std::optional<at::Tensor>& first) {
  detail::check_append_decode_attention(query, key, value, keys, values, position, cos, sin, first);
  const at::Tensor index = position.reshape({1});
  if (!cos) {
    keys.index_copy_(2, index, key);  // index_copy_ throws past the capacity
    values.index_copy_(2, index, value);
    return decode_attention_cpu(query, keys, values, position, scale, first);
  }
  // cos, sin [rows, dim] as [rows, 1, 1, dim]: one row for every sequence, or one each.
  const at::Tensor cos4 = cos->view({cos->size(0), 1, 1, cos->size(1)});
  const at::Tensor sin4 = sin->view({sin->size(0), 1, 1, sin->size(1)});
  keys.index_copy_(2, index, rotate(key, cos4, sin4));
  values.index_copy_(2, index, value);
  return decode_attention_cpu(rotate(query, cos4, sin4), keys, values, position, scale, first);
}

void reorder_cache_rows_cpu(at::TensorList caches, const at::Tensor& order, const at::Tensor& position) {
  detail::check_reorder_cache_rows(caches, order, position);
  const int64_t capacity = caches.front().size(2);
  const int64_t filled = std::min(position.item<int64_t>(), capacity - 1) + 1;
  TORCH_CHECK_VALUE(filled > 0, "reorder_cache_rows: position must not be negative");
  for (const at::Tensor& cache : caches) {
    at::Tensor rows = cache.narrow(2, 0, filled);
    rows.copy_(rows.index_select(0, order));  // index_select throws for an order outside the batch
  }
}

}  // namespace
}  // namespace imagetotext::ops

TORCH_LIBRARY_IMPL(imagetotext, CPU, m) {
  m.impl("rms_norm", &imagetotext::ops::rms_norm_cpu);
  m.impl("rotary", &imagetotext::ops::rotary_cpu);
  m.impl("silu_mul", &imagetotext::ops::silu_mul_cpu);
  m.impl("decode_attention", &imagetotext::ops::decode_attention_cpu);
  m.impl("append_decode_attention", &imagetotext::ops::append_decode_attention_cpu);
  m.impl("reorder_cache_rows", &imagetotext::ops::reorder_cache_rows_cpu);
}
