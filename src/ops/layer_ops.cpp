#include "layer_ops.hpp"

#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/util/Exception.h>

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

void check_rotary_decode_attention(const at::Tensor& query, const at::Tensor& key, const at::Tensor& value,
                                   const at::Tensor& cos, const at::Tensor& sin, const at::Tensor& keys,
                                   const at::Tensor& values, const at::Tensor& position,
                                   const std::optional<at::Tensor>& first) {
  TORCH_CHECK_VALUE(query.dim() == 4 && query.size(2) == 1 && query.size(3) % 2 == 0,
                    "rotary_decode_attention: query must be [batch, heads, 1, even head_dim], got ", query.sizes());
  const int64_t batch = query.size(0), dim = query.size(3);
  TORCH_CHECK_VALUE(keys.dim() == 4 && keys.sizes() == values.sizes() && keys.size(0) == batch && keys.size(3) == dim,
                    "rotary_decode_attention: keys and values must be [", batch, ", kv_heads, capacity, ", dim, "], got ",
                    keys.sizes(), " and ", values.sizes());
  TORCH_CHECK_VALUE(keys.is_contiguous() && values.is_contiguous(),
                    "rotary_decode_attention: keys and values must be contiguous (they are written in place)");
  for (const at::Tensor* t : {&key, &value}) {
    TORCH_CHECK_VALUE(t->dim() == 4 && t->size(0) == batch && t->size(1) == keys.size(1) && t->size(2) == 1 &&
                          t->size(3) == dim,
                      "rotary_decode_attention: key and value must be [", batch, ", ", keys.size(1), ", 1, ", dim,
                      "], got ", key.sizes(), " and ", value.sizes());
  }
  for (const at::Tensor* t : {&cos, &sin}) {
    TORCH_CHECK_VALUE(t->dim() == 2 && (t->size(0) == 1 || t->size(0) == batch) && t->size(1) == dim,
                      "rotary_decode_attention: cos and sin must be [1 or ", batch, ", ", dim, "], got ", t->sizes());
  }
  for (const at::Tensor* t : {&key, &value, &cos, &sin, &keys, &values}) {
    TORCH_CHECK_VALUE(t->scalar_type() == query.scalar_type() && t->device() == query.device(),
                      "rotary_decode_attention: every tensor must match the query's dtype and device (",
                      query.scalar_type(), ", ", query.device(), "), got ", t->scalar_type(), " on ", t->device());
  }
  check_decode_attention("rotary_decode_attention", query, keys, values, position, first);
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
  TORCH_CHECK_VALUE(keys.dim() == 4 && keys.sizes() == values.sizes() && keys.size(0) == query.size(0) &&
                        keys.size(3) == query.size(3) && keys.size(1) > 0 && query.size(1) % keys.size(1) == 0,
                    op, ": keys and values must be [", query.size(0), ", kv_heads dividing ",
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

at::Tensor rotary_decode_attention(const at::Tensor& query, const at::Tensor& key, const at::Tensor& value,
                                   const at::Tensor& cos, const at::Tensor& sin, const at::Tensor& keys,
                                   const at::Tensor& values, const at::Tensor& position, double scale,
                                   const std::optional<at::Tensor>& first) {
  static const auto op =
      find_op<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                         const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, double,
                         const std::optional<at::Tensor>&)>("imagetotext::rotary_decode_attention");
  return op.call(query, key, value, cos, sin, keys, values, position, scale, first);
}

}  // namespace imagetotext::ops
