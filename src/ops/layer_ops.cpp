#include "layer_ops.hpp"

#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/util/Exception.h>

#include <vector>

namespace imagetotext::ops {
namespace detail {

void check_rms_norm(const at::Tensor& x, const at::Tensor& weight) {
  TORCH_CHECK_VALUE(x.dim() >= 1 && weight.dim() == 1 && weight.size(0) == x.size(-1),
                    "rms_norm: weight must be [", x.dim() >= 1 ? x.size(-1) : 0, "] for x ", x.sizes(), ", got ",
                    weight.sizes());
  TORCH_CHECK_VALUE(at::isFloatingType(x.scalar_type()) && weight.scalar_type() == x.scalar_type(),
                    "rms_norm: x and weight must share one floating dtype, got ", x.scalar_type(), " and ",
                    weight.scalar_type());
  TORCH_CHECK_VALUE(weight.device() == x.device(), "rms_norm: x is on ", x.device(), ", weight on ", weight.device());
}

void check_rotary(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin) {
  TORCH_CHECK_VALUE(x.dim() == 4 && x.size(-1) % 2 == 0, "rotary: x must be [batch, heads, length, even head_dim], got ",
                    x.sizes());
  for (const at::Tensor* t : {&cos, &sin}) {
    TORCH_CHECK_VALUE(t->dim() == 2 && t->size(0) == x.size(2) && t->size(1) == x.size(3),
                      "rotary: cos and sin must be [", x.size(2), ", ", x.size(3), "], got ", t->sizes());
    TORCH_CHECK_VALUE(t->scalar_type() == x.scalar_type() && t->device() == x.device(),
                      "rotary: cos and sin must match x's dtype and device (", x.scalar_type(), ", ", x.device(), ")");
  }
}

void check_append_decode_attention(const at::Tensor& query, const at::Tensor& key, const at::Tensor& value,
                                   const at::Tensor& keys, const at::Tensor& values, const at::Tensor& position,
                                   const std::optional<at::Tensor>& cos, const std::optional<at::Tensor>& sin,
                                   const std::optional<at::Tensor>& first) {
  constexpr const char* op = "append_decode_attention";
  TORCH_CHECK_VALUE(query.dim() == 4 && query.size(2) == 1, op, ": query must be [batch, heads, 1, head_dim], got ",
                    query.sizes());
  const int64_t batch = query.size(0), dim = query.size(3);
  TORCH_CHECK_VALUE(keys.dim() == 4 && keys.sizes() == values.sizes() && keys.size(0) == batch && keys.size(3) == dim,
                    op, ": keys and values must be [", batch, ", kv_heads, capacity, ", dim, "], got ", keys.sizes(),
                    " and ", values.sizes());
  TORCH_CHECK_VALUE(keys.is_contiguous() && values.is_contiguous(), op,
                    ": keys and values must be contiguous (they are written in place)");
  for (const at::Tensor* t : {&key, &value}) {
    TORCH_CHECK_VALUE(t->dim() == 4 && t->size(0) == batch && t->size(1) == keys.size(1) && t->size(2) == 1 &&
                          t->size(3) == dim,
                      op, ": key and value must be [", batch, ", ", keys.size(1), ", 1, ", dim, "], got ", key.sizes(),
                      " and ", value.sizes());
  }
  TORCH_CHECK_VALUE(cos.has_value() == sin.has_value(), op, ": cos and sin come together (both or neither)");
  std::vector<const at::Tensor*> same_kind{&key, &value, &keys, &values};
  if (cos) {
    TORCH_CHECK_VALUE(dim % 2 == 0, op, ": a rotated head_dim must be even, got ", dim);
    for (const at::Tensor* t : {&*cos, &*sin}) {
      TORCH_CHECK_VALUE(t->dim() == 2 && (t->size(0) == 1 || t->size(0) == batch) && t->size(1) == dim, op,
                        ": cos and sin must be [1 or ", batch, ", ", dim, "], got ", t->sizes());
      same_kind.push_back(t);
    }
  }
  for (const at::Tensor* t : same_kind) {
    TORCH_CHECK_VALUE(t->scalar_type() == query.scalar_type() && t->device() == query.device(), op,
                      ": every tensor must match the query's dtype and device (", query.scalar_type(), ", ",
                      query.device(), "), got ", t->scalar_type(), " on ", t->device());
  }
  check_decode_attention(op, query, keys, values, position, first);
}

void check_reorder_cache_rows(at::TensorList caches, const at::Tensor& order, const at::Tensor& position) {
  constexpr const char* op = "reorder_cache_rows";
  TORCH_CHECK_VALUE(!caches.empty(), op, ": no caches given");
  const at::Tensor& first = caches.front();
  TORCH_CHECK_VALUE(first.dim() == 4, op, ": caches must be [batch, kv_heads, capacity, head_dim], got ", first.sizes());
  for (const at::Tensor& cache : caches) {
    TORCH_CHECK_VALUE(cache.sizes() == first.sizes() && cache.scalar_type() == first.scalar_type() &&
                          cache.device() == first.device(),
                      op, ": every cache must match the first (", first.sizes(), ", ", first.scalar_type(), " on ",
                      first.device(), "), got ", cache.sizes(), ", ", cache.scalar_type(), " on ", cache.device());
    TORCH_CHECK_VALUE(cache.is_contiguous(), op, ": caches must be contiguous (they are written in place)");
  }
  TORCH_CHECK_VALUE(order.dim() == 1 && order.size(0) == first.size(0) && order.scalar_type() == at::kLong &&
                        order.device() == first.device(),
                    op, ": order must be int64 [", first.size(0), "] on ", first.device(), ", got ", order.scalar_type(),
                    " ", order.sizes(), " on ", order.device());
  TORCH_CHECK_VALUE(position.numel() == 1 && position.scalar_type() == at::kLong && position.device() == first.device(),
                    op, ": position must be one int64 on ", first.device(), ", got ", position.scalar_type(), " ",
                    position.sizes(), " on ", position.device());
}

void check_silu_mul(const at::Tensor& gate, const at::Tensor& up) {
  TORCH_CHECK_VALUE(gate.sizes() == up.sizes() && gate.scalar_type() == up.scalar_type() &&
                        gate.device() == up.device() && at::isFloatingType(gate.scalar_type()),
                    "silu_mul: gate and up must share shape, floating dtype and device, got ", gate.sizes(), " ",
                    gate.scalar_type(), " and ", up.sizes(), " ", up.scalar_type());
}

void check_decode_attention(const char* op, const at::Tensor& query, const at::Tensor& keys, const at::Tensor& values,
                            const at::Tensor& position, const std::optional<at::Tensor>& first) {
  TORCH_CHECK_VALUE(query.dim() == 4 && query.size(2) == 1, op, ": query must be [batch, heads, 1, "
                    "head_dim], got ", query.sizes());
  TORCH_CHECK_VALUE(keys.dim() == 4 && keys.sizes() == values.sizes() &&
                        (keys.size(0) == query.size(0) || (keys.size(0) > 0 && query.size(0) % keys.size(0) == 0)) &&
                        keys.size(3) == query.size(3) && keys.size(1) > 0 && query.size(1) % keys.size(1) == 0,
                    op, ": keys and values must be [rows dividing ", query.size(0), ", kv_heads dividing ",
                    query.size(1), ", capacity, ", query.size(3), "], got ", keys.sizes(), " and ", values.sizes());
  TORCH_CHECK_VALUE(keys.scalar_type() == query.scalar_type() && values.scalar_type() == query.scalar_type() &&
                        keys.device() == query.device() && values.device() == query.device(),
                    op, ": query, keys and values must share dtype and device");
  TORCH_CHECK_VALUE(position.scalar_type() == at::kLong && position.numel() == 1 && position.device() == query.device(),
                    op, ": position must be one int64 on ", query.device(), ", got ", position.sizes(),
                    " ", position.scalar_type(), " on ", position.device());
  if (first) {
    TORCH_CHECK_VALUE(first->scalar_type() == at::kLong && first->dim() == 1 && first->size(0) == query.size(0) &&
                          first->device() == query.device(),
                      op, ": first must be int64 [", query.size(0), "] on ", query.device(), ", got ",
                      first->sizes(), " ", first->scalar_type(), " on ", first->device());
  }
}

}  // namespace detail

namespace {
template <class Signature>
auto find_op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Signature>();
}
}  // namespace

at::Tensor rms_norm(const at::Tensor& x, const at::Tensor& weight, double eps) {
  static const auto op = find_op<at::Tensor(const at::Tensor&, const at::Tensor&, double)>("imagetotext::rms_norm");
  return op.call(x, weight, eps);
}

at::Tensor rotary(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin) {
  static const auto op =
      find_op<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&)>("imagetotext::rotary");
  return op.call(x, cos, sin);
}

at::Tensor silu_mul(const at::Tensor& gate, const at::Tensor& up) {
  static const auto op = find_op<at::Tensor(const at::Tensor&, const at::Tensor&)>("imagetotext::silu_mul");
  return op.call(gate, up);
}

at::Tensor decode_attention(const at::Tensor& query, const at::Tensor& keys, const at::Tensor& values,
                            const at::Tensor& position, double scale, const std::optional<at::Tensor>& first) {
  static const auto op =
      find_op<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, double,
                         const std::optional<at::Tensor>&)>("imagetotext::decode_attention");
  return op.call(query, keys, values, position, scale, first);
}

void reorder_cache_rows(at::TensorList caches, const at::Tensor& order, const at::Tensor& position) {
  static const auto op =
      find_op<void(at::TensorList, const at::Tensor&, const at::Tensor&)>("imagetotext::reorder_cache_rows");
  op.call(caches, order, position);
}

at::Tensor append_decode_attention(const at::Tensor& query, const at::Tensor& key, const at::Tensor& value,
                                   const at::Tensor& keys, const at::Tensor& values, const at::Tensor& position,
                                   double scale, const std::optional<at::Tensor>& cos,
                                   const std::optional<at::Tensor>& sin, const std::optional<at::Tensor>& first) {
  static const auto op =
      find_op<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                         const at::Tensor&, const at::Tensor&, double, const std::optional<at::Tensor>&,
                         const std::optional<at::Tensor>&, const std::optional<at::Tensor>&)>(
          "imagetotext::append_decode_attention");
  return op.call(query, key, value, keys, values, position, scale, cos, sin, first);
}

}  // namespace imagetotext::ops
