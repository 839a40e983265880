// Fused layer ops for the decoders' per-token work (torch.ops.imagetotext.*): on CUDA one kernel each where
// ATen launches several (a decode step is bound by how many kernels it runs); on the CPU the ATen composition
// the layers used before, so CPU results are unchanged.
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>

namespace imagetotext::ops {

// weight * (x * rsqrt(mean(x^2, -1) + eps)), the statistics in float32 and the normed value cast to x's dtype
// before the weight multiplies it (transformers' LlamaRMSNorm). x [..., n], weight [n].
at::Tensor rms_norm(const at::Tensor& x, const at::Tensor& weight, double eps);

// x * cos + rotate_half(x) * sin for x [batch, heads, length, head_dim] (any strides) and cos, sin
// [length, head_dim]; each product and the sum rounded to x's dtype as ATen's elementwise ops round them.
at::Tensor rotary(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin);

// silu(gate) * up, silu rounded to the dtype before the product (as at::silu(gate) * up).
at::Tensor silu_mul(const at::Tensor& gate, const at::Tensor& up);

// Attention of one new token per sequence: query [batch, heads, 1, head_dim] over keys, values
// [rows, kv_heads, capacity, head_dim] at positions 0 .. position (int64 [1] on the device; the rest of the
// buffers is ignored), heads / kv_heads queries per key/value head. Returns [batch, heads, 1, head_dim].
// rows divides batch: batch / rows consecutive sequences read one row (an image's beams attending to the keys and
// values of its encoder output, held once); rows = batch is a row per sequence.
// `first` (int64 [batch] on the device, each in 0 .. position): row b attends to first[b] .. position only, the
// positions before being the left padding of a batch of prompts of different lengths.
at::Tensor decode_attention(const at::Tensor& query, const at::Tensor& keys, const at::Tensor& values,
                            const at::Tensor& position, double scale,
                            const std::optional<at::Tensor>& first = std::nullopt);

// A decode step's attention with the new token's cache write (and, for rotary models, its rotary embedding):
// query [batch, heads, 1, head_dim] and key, value [batch, kv_heads, 1, head_dim] as the projection gives them
// (any strides). Writes key and value at `position` of the caches keys, values [batch, kv_heads, capacity,
// head_dim] (contiguous, written in place) and returns decode_attention(query, keys, values, position, scale,
// first): what index_copy_ and decode_attention give. With cos and sin ([1 or batch, head_dim]: one row for every
// sequence, or a row each; even head_dim) the query and key are rotated first, rounded as ops::rotary rounds.
// On CUDA one pass of decode_attention's kernels (the rotation and the write happen in its split kernel). A
// position outside the caches writes nothing on CUDA (the host keeps the step inside the capacity) and throws
// on the CPU.
at::Tensor append_decode_attention(const at::Tensor& query, const at::Tensor& key, const at::Tensor& value,
                                   const at::Tensor& keys, const at::Tensor& values, const at::Tensor& position,
                                   double scale, const std::optional<at::Tensor>& cos = std::nullopt,
                                   const std::optional<at::Tensor>& sin = std::nullopt,
                                   const std::optional<at::Tensor>& first = std::nullopt);

// Beam search over fixed-shape caches: in every cache [batch, kv_heads, capacity, head_dim] (all of one shape and
// dtype, contiguous, written in place), row b becomes what row order[b] held (order: int64 [batch] on the
// caches' device), at positions 0 .. position (int64 [1] on the device; the rest is not filled yet, and may move
// too where rows are too wide for the kernel to stage). On CUDA one kernel for all caches, where index_select and
// a copy back cost two kernels a cache and moved every position.
void reorder_cache_rows(at::TensorList caches, const at::Tensor& order, const at::Tensor& position);

namespace detail {
// Argument checks shared by the CPU and CUDA kernels; each throws c10::ValueError naming the argument.
void check_rms_norm(const at::Tensor& x, const at::Tensor& weight);
void check_rotary(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin);
void check_append_decode_attention(const at::Tensor& query, const at::Tensor& key, const at::Tensor& value,
                                   const at::Tensor& keys, const at::Tensor& values, const at::Tensor& position,
                                   const std::optional<at::Tensor>& cos, const std::optional<at::Tensor>& sin,
                                   const std::optional<at::Tensor>& first);
void check_silu_mul(const at::Tensor& gate, const at::Tensor& up);
void check_reorder_cache_rows(at::TensorList caches, const at::Tensor& order, const at::Tensor& position);
// `op`: the name the messages give (decode_attention or append_decode_attention).
void check_decode_attention(const char* op, const at::Tensor& query, const at::Tensor& keys, const at::Tensor& values,
                            const at::Tensor& position, const std::optional<at::Tensor>& first);
}  // namespace detail

}  // namespace imagetotext::ops
