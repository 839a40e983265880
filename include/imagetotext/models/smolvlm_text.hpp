// SmolVLM's text model: transformers' LlamaModel plus the untied lm_head.
//
//   embeddings [batch, length, hidden]
//     --decoder layer x N: h += o_proj(attention(RMSNorm(h)))   (RoPE, grouped-query, causal, KV cache)
//                          h += down(silu(gate(x)) * up(x)),  x = RMSNorm(h)
//     --final RMSNorm--> lm_head --> logits [batch, length, vocab]
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <optional>
#include <vector>

#include "imagetotext/models/smolvlm_config.hpp"
#include "imagetotext/nn/attention.hpp"
#include "imagetotext/nn/layers.hpp"
#include "imagetotext/nn/linear.hpp"
#include "imagetotext/nn/rotary.hpp"
#include "imagetotext/nn/weights.hpp"

namespace imagetotext::smolvlm {

struct DecoderLayer {
  nn::RMSNorm input_layernorm;
  nn::FusedLinear qkv_proj;  // q_proj, k_proj, v_proj: one GEMV
  nn::Linear o_proj;
  nn::RMSNorm post_attention_layernorm;
  nn::FusedLinear gate_up_proj;  // gate_proj, up_proj: one GEMV
  nn::Linear down_proj;
};

// One request's keys and values: one cache per layer, allocated once at the request's final length.
using TextCache = std::vector<nn::KVCache>;

class TextModel {
 public:
  // Reads `embed_tokens`, `layers.<i>.*` and `norm` under `text_weights` (model.text_model) and `lm_head`
  // under `head_weights` (the checkpoint's root; the embedding matrix when tie_word_embeddings).
  static TextModel load(const nn::Weights& text_weights, const nn::Weights& head_weights, const SmolVLMConfig& config,
                        const nn::LinearPolicy& policy);

  at::Tensor embed(const at::Tensor& input_ids) const { return embed_tokens_(input_ids); }

  // A cache for `batch` sequences of up to `capacity` positions (prompt plus generated tokens).
  TextCache new_cache(std::int64_t batch, std::int64_t capacity) const;

  // Runs the decoder layers on `embeddings` [batch, length, hidden] at the positions following those already
  // in `cache` (appending their keys and values) and returns the final-normed hidden states.
  //
  // `padding` (int64 [batch] on the device) is for a batch of prompts of different lengths padded on the left:
  // row b's first padding[b] cache positions are padding, never attended to, and its positions count from its
  // first real token (transformers' generate: position_ids = cumsum(attention_mask) - 1, 0 on padding).
  at::Tensor forward(const at::Tensor& embeddings, TextCache& cache,
                     const std::optional<at::Tensor>& padding = std::nullopt) const;

  // One decode step with fixed shapes: `token` [batch, 1] (int64) at `position` (int64 [1], on the device),
  // its keys and values written there, attention over the whole cache masked past `position`. Returns logits
  // [batch, vocab]. Nothing reads back to the host and no shape depends on the position, so a CUDA graph can
  // record it once and replay it every step. The caches' length() is left as it was. `padding`: as in forward.
  at::Tensor decode_step(const at::Tensor& token, const at::Tensor& position, TextCache& cache,
                         const std::optional<at::Tensor>& padding = std::nullopt) const;

  // Whether decode_step can be recorded in a CUDA graph: no layer reads back to the host (LLM.int8 layers
  // pick their outlier columns there).
  bool capturable() const;

  // lm_head on hidden states: [..., hidden] -> [..., vocab].
  at::Tensor logits(const at::Tensor& hidden) const { return (*lm_head_)(hidden); }

  const SmolVLMTextConfig& config() const noexcept { return config_; }

 private:
  // Where a pass writes its keys and values: after those in the cache (`step` null), or at a position held
  // on the device, attending to positions 0 .. position.
  struct DeviceStep {
    at::Tensor position;
  };
  // A left-padded batch: each row's padding length, and for a pass through forward() the boolean attention
  // mask [batch, 1, length, cache length] (causal, padding keys out). cos and sin are then per row and position,
  // [batch * length, head_dim].
  struct LeftPadding {
    at::Tensor first;
    at::Tensor mask;
  };
  // The decoder layers on h: the residual stream after the last layer (before the final norm).
  at::Tensor layers_forward(at::Tensor h, TextCache& cache, const at::Tensor& cos, const at::Tensor& sin,
                            const DeviceStep* step, const LeftPadding* padding) const;
  // The attention block of `layer` on the residual stream h (its input norm included, o_proj not).
  at::Tensor attention(const DecoderLayer& layer, const at::Tensor& h, nn::KVCache& cache, const at::Tensor& cos,
                       const at::Tensor& sin, const DeviceStep* step, const LeftPadding* padding) const;
  // lm_head on the final norm of the residual stream, the norm fused into lm_head's input.
  at::Tensor final_logits(const at::Tensor& h) const { return (*lm_head_)(h, norm_.as_linear_input()); }

  SmolVLMTextConfig config_;
  nn::Embedding embed_tokens_;
  std::vector<DecoderLayer> layers_;
  nn::RMSNorm norm_;
  std::optional<nn::Linear> lm_head_;
  nn::RotaryEmbedding rotary_;
};

}  // namespace imagetotext::smolvlm
