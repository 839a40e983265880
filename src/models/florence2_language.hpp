// Florence-2's language side: a BART encoder over [image tokens ; prompt tokens] and a BART decoder with
// causal self-attention and cross-attention to the encoder output, post-LayerNorm throughout, learned
// positions offset by 2, the output projection tied to the token embedding. Internal to the library.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <optional>
#include <utility>
#include <vector>

#include "imagetotext/models/florence2_config.hpp"
#include "imagetotext/nn/attention.hpp"
#include "imagetotext/nn/layers.hpp"
#include "imagetotext/nn/linear.hpp"
#include "imagetotext/nn/weights.hpp"

namespace imagetotext::florence2 {

// Florence-2's attention projections: q, k and v of one input stacked as one layer (nn::FusedLinear: one GEMV a
// decode step), out_proj with the residual added in its epilogue.
struct SelfAttention {
  nn::FusedLinear qkv_proj;  // q_proj, k_proj, v_proj
  nn::Linear out_proj;
  std::int64_t heads;
  SelfAttention(const nn::Weights& weights, std::int64_t dim, std::int64_t heads, const nn::LinearPolicy& policy);
};

// The decoder's attention to the encoder output: q from the decoder, k and v (stacked) from the encoder output,
// computed once per request.
struct CrossAttention {
  nn::Linear q_proj;
  nn::FusedLinear kv_proj;  // k_proj, v_proj
  nn::Linear out_proj;
  std::int64_t heads;
  CrossAttention(const nn::Weights& weights, std::int64_t dim, std::int64_t heads, const nn::LinearPolicy& policy);
};

struct EncoderLayer {
  SelfAttention self_attn;
  nn::LayerNorm self_attn_layer_norm;
  nn::Linear fc1;
  nn::Linear fc2;
  nn::LayerNorm final_layer_norm;
  EncoderLayer(const nn::Weights& weights, const Florence2TextConfig& config, const nn::LinearPolicy& policy);
  at::Tensor operator()(const at::Tensor& x) const;
};

// Per request: a self-attention cache per layer (all beams) and the cross-attention keys/values, which
// depend only on the encoder output and so are computed once. A fixed-shape state (for steps a CUDA graph
// replays) holds the encoder side once per image (its beams read the same rows: ops::decode_attention), in
// buffers of a fixed encoder capacity filled up to `encoder_last`, so one recording serves prompts of different
// lengths.
struct DecoderState {
  std::vector<nn::KVCache> self_attention;
  // [sequences, heads, encoder length, head_dim] each; fixed-shape: [images, heads, encoder capacity, head_dim]
  std::vector<std::pair<at::Tensor, at::Tensor>> cross_attention;
  at::Tensor encoder_last;  // fixed-shape states: the last filled encoder position, int64 [1] on the device
  std::int64_t length() const { return self_attention.empty() ? 0 : self_attention.front().length(); }
  bool fixed_shape() const { return encoder_last.defined(); }
};

// A fixed-shape decode step: where it writes its keys and values and attends up to, and the last encoder position
// the cross-attention reads (int64 [1] each, on the device).
struct DeviceStep {
  at::Tensor position;
  at::Tensor encoder_last;
};

struct DecoderLayer {
  SelfAttention self_attn;
  nn::LayerNorm self_attn_layer_norm;
  CrossAttention encoder_attn;
  nn::LayerNorm encoder_attn_layer_norm;
  nn::Linear fc1;
  nn::Linear fc2;
  nn::LayerNorm final_layer_norm;
  DecoderLayer(const nn::Weights& weights, const Florence2TextConfig& config, const nn::LinearPolicy& policy);
  // Post-norm, with each norm run by the linear layer that reads its output: `pre` is the layer's input before
  // `input_norm` (the previous layer's final_layer_norm, or the decoder's layernorm_embedding), and the result
  // is the output before this layer's final_layer_norm. `step` null: the keys and values appended to the cache,
  // causal attention over its filled part; else a fixed-shape step at step->position over the whole cache, and
  // over the encoder positions up to step->encoder_last of `cross` held per image.
  at::Tensor operator()(const at::Tensor& pre, const nn::LayerNorm& input_norm, nn::KVCache& cache,
                        const std::pair<at::Tensor, at::Tensor>& cross, const DeviceStep* step) const;
};

class LanguageModel {
 public:
  // `weights` is the language model's prefix ("model.language_model"); `lm_head_bias` the original layout's
  // final_logits_bias when its checkpoint has one.
  LanguageModel(const nn::Weights& weights, const at::Tensor& shared, std::optional<at::Tensor> lm_head_bias,
                const Florence2TextConfig& config, const nn::LinearPolicy& policy);

  // Token embeddings (times the embedding scale, 1 unless scale_embedding).
  at::Tensor embed(const at::Tensor& ids) const;
  // Encoder over ready embeddings [B, L, D] (image tokens are not scaled).
  at::Tensor encode(const at::Tensor& inputs_embeds) const;

  // Caches for `sequences` decoder sequences of up to `capacity` tokens over `encoder_output` [batch, L, D]:
  // sequences / batch consecutive sequences per image (its beams). Throws InvalidArgumentError when the
  // sequences do not split evenly over the batch.
  // encoder_capacity > 0: a fixed-shape state whose encoder side holds up to that many positions.
  DecoderState start_decoding(const at::Tensor& encoder_output, std::int64_t sequences, std::int64_t capacity,
                              std::int64_t encoder_capacity = 0) const;
  // A fixed-shape state's encoder side refilled, in place, for a new encoder output (recorded steps keep
  // reading the same buffers). Throws InvalidArgumentError past its encoder capacity.
  void restart_decoding(DecoderState& state, const at::Tensor& encoder_output) const;
  // Appends `ids` [n, l] to every sequence and returns logits [n, l, vocab] in float32 (a state that is not
  // fixed-shape; InvalidArgumentError otherwise).
  at::Tensor decode(const at::Tensor& ids, DecoderState& state) const;
  // One fixed-shape step of a fixed-shape state: `ids` [n, 1] at `position` (int64 [1] on the device), keys and
  // values written there, attention over the whole caches masked past it. Returns logits [n, vocab] in
  // float32. Nothing reads back to the host and no shape depends on the position: a CUDA graph can record it.
  at::Tensor decode_step(const at::Tensor& ids, const at::Tensor& position, DecoderState& state) const;
  // Sequence i continues sequence order[i] (int64 [n]; on the device for fixed-shape states, whose caches move
  // at positions 0 .. `position`, the step's int64 [1] on the device, in one ops::reorder_cache_rows).
  void reorder(DecoderState& state, const at::Tensor& order,
               const std::optional<at::Tensor>& position = std::nullopt) const;
  // Whether decode_step can be recorded in a CUDA graph: no decoder layer reads back to the host (LLM.int8
  // layers pick their outlier columns there).
  bool capturable() const;
  // The most decoder positions (the learned position table's).
  std::int64_t max_decoder_positions() const { return config_.max_position_embeddings; }

  const Florence2TextConfig& config() const noexcept { return config_; }

 private:
  // The tied lm_head over `norm`(h), plus the lm_head's bias, in float32.
  at::Tensor logits(const at::Tensor& h, const nn::LayerNorm& norm) const;

  Florence2TextConfig config_;
  nn::Embedding shared_;
  std::optional<at::Tensor> lm_head_bias_;
  double embed_scale_;
  at::Tensor encoder_positions_;
  nn::LayerNorm encoder_layernorm_embedding_;
  std::vector<EncoderLayer> encoder_layers_;
  at::Tensor decoder_positions_;
  nn::LayerNorm decoder_layernorm_embedding_;
  std::vector<DecoderLayer> decoder_layers_;
};

}  // namespace imagetotext::florence2
