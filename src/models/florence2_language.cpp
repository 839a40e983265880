#include "florence2_language.hpp"

#include <ATen/ops/empty_like.h>
#include <ATen/ops/zeros.h>
#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "imagetotext/core/error.hpp"
#include "imagetotext/quant/quantize.hpp"
#include "../ops/layer_ops.hpp"

namespace imagetotext::florence2 {

namespace {
constexpr std::int64_t kPositionOffset = 2;  // BartLearnedPositionalEmbedding's

at::Tensor positions(const at::Tensor& table, std::int64_t start, std::int64_t length, const char* side) {
  if (start + length + kPositionOffset > table.size(0)) {
    throw InvalidArgumentError(fmt::format("the {} sequence reaches {} tokens; Florence-2's {} holds at most {}", side,
                                           start + length, side, table.size(0) - kPositionOffset));
  }
  return table.narrow(0, start + kPositionOffset, length);
}

// [B, L, heads * head_dim] -> [B, heads, L, head_dim] (a view) and back.
at::Tensor split_heads(const at::Tensor& x, std::int64_t heads) {
  return x.view({x.size(0), x.size(1), heads, x.size(2) / heads}).transpose(1, 2);
}

at::Tensor merge_heads(const at::Tensor& x) {
  return x.transpose(1, 2).reshape({x.size(0), x.size(2), x.size(1) * x.size(3)});
}
}  // namespace

SelfAttention::SelfAttention(const nn::Weights& weights, std::int64_t dim, std::int64_t heads_,
                             const nn::LinearPolicy& policy)
    : qkv_proj(nn::FusedLinear::load(weights, {"q_proj", "k_proj", "v_proj"}, policy, dim, {dim, dim, dim})),
      out_proj(nn::Linear::load(weights, "out_proj", policy, dim, dim)),
      heads(heads_) {}

CrossAttention::CrossAttention(const nn::Weights& weights, std::int64_t dim, std::int64_t heads_,
                               const nn::LinearPolicy& policy)
    : q_proj(nn::Linear::load(weights, "q_proj", policy, dim, dim)),
      kv_proj(nn::FusedLinear::load(weights, {"k_proj", "v_proj"}, policy, dim, {dim, dim})),
      out_proj(nn::Linear::load(weights, "out_proj", policy, dim, dim)),
      heads(heads_) {}

EncoderLayer::EncoderLayer(const nn::Weights& weights, const Florence2TextConfig& config, const nn::LinearPolicy& policy)
    : self_attn(weights["self_attn"], config.d_model, config.encoder_attention_heads, policy),
      self_attn_layer_norm(nn::LayerNorm::load(weights, "self_attn_layer_norm", config.d_model, 1e-5)),
      fc1(nn::Linear::load(weights, "fc1", policy, config.d_model, config.encoder_ffn_dim)),
      fc2(nn::Linear::load(weights, "fc2", policy, config.encoder_ffn_dim, config.d_model)),
      final_layer_norm(nn::LayerNorm::load(weights, "final_layer_norm", config.d_model, 1e-5)) {}

at::Tensor EncoderLayer::operator()(const at::Tensor& x) const {
  const std::vector<at::Tensor> qkv = self_attn.qkv_proj(x);
  const at::Tensor attended = nn::scaled_dot_product_attention(
      split_heads(qkv[0], self_attn.heads), split_heads(qkv[1], self_attn.heads), split_heads(qkv[2], self_attn.heads));
  const at::Tensor h = self_attn_layer_norm(self_attn.out_proj(merge_heads(attended), {.residual = x}));
  return final_layer_norm(fc2(fc1(h, {.gelu = true}), {.residual = h}));
}

DecoderLayer::DecoderLayer(const nn::Weights& weights, const Florence2TextConfig& config, const nn::LinearPolicy& policy)
    : self_attn(weights["self_attn"], config.d_model, config.decoder_attention_heads, policy),
      self_attn_layer_norm(nn::LayerNorm::load(weights, "self_attn_layer_norm", config.d_model, 1e-5)),
      encoder_attn(weights["encoder_attn"], config.d_model, config.decoder_attention_heads, policy),
      encoder_attn_layer_norm(nn::LayerNorm::load(weights, "encoder_attn_layer_norm", config.d_model, 1e-5)),
      fc1(nn::Linear::load(weights, "fc1", policy, config.d_model, config.decoder_ffn_dim)),
      fc2(nn::Linear::load(weights, "fc2", policy, config.decoder_ffn_dim, config.d_model)),
      final_layer_norm(nn::LayerNorm::load(weights, "final_layer_norm", config.d_model, 1e-5)) {}

at::Tensor DecoderLayer::operator()(const at::Tensor& pre, const nn::LayerNorm& input_norm, nn::KVCache& cache,
                                    const std::pair<at::Tensor, at::Tensor>& cross, const DeviceStep* step) const {
  // Each norm runs inside the linear layer that reads its output, which also writes the normed values out for
  // the residual step; each residual step runs as the residual of the linear layer that ends it; the GELU runs in
  // fc1's epilogue (ops::GemmFusion). A decode step is then GEMVs and attention kernels only.
  const std::int64_t heads = self_attn.heads;
  const at::Tensor x = at::empty_like(pre);
  const std::vector<at::Tensor> qkv = self_attn.qkv_proj(pre, input_norm.as_linear_input(x));
  const at::Tensor query = split_heads(qkv[0], heads), key = split_heads(qkv[1], heads),
                   value = split_heads(qkv[2], heads);
  at::Tensor own;
  if (step) {
    // The new key and value written at the step's position inside the attention over positions 0 .. position of
    // the fixed-capacity cache (one pass of the attention kernels on CUDA).
    own = cache.attend_at(query, key, value, step->position, 1.0 / std::sqrt(static_cast<double>(query.size(3))));
  } else {
    const auto [keys, values] = cache.append(key, value);
    own = nn::scaled_dot_product_attention(query, keys, values, std::nullopt, /*causal=*/pre.size(1) > 1);
  }
  const at::Tensor attended = self_attn.out_proj(merge_heads(own), {.residual = x});
  const at::Tensor h = at::empty_like(attended);
  const at::Tensor cross_query =
      split_heads(encoder_attn.q_proj(attended, self_attn_layer_norm.as_linear_input(h)), encoder_attn.heads);
  // A fixed-shape step reads each image's keys and values once for all its beams, up to the encoder's last position
  // (the buffers' capacity is past it).
  const at::Tensor image_and_prompt =
      step ? ops::decode_attention(cross_query, cross.first, cross.second, step->encoder_last,
                                   1.0 / std::sqrt(static_cast<double>(cross_query.size(3))))
           : nn::scaled_dot_product_attention(cross_query, cross.first, cross.second);
  const at::Tensor crossed = encoder_attn.out_proj(merge_heads(image_and_prompt), {.residual = h});
  const at::Tensor h2 = at::empty_like(crossed);
  ops::GemmFusion fc1_fusion = encoder_attn_layer_norm.as_linear_input(h2);
  fc1_fusion.gelu = true;
  return fc2(fc1(crossed, fc1_fusion), {.residual = h2});
}

LanguageModel::LanguageModel(const nn::Weights& weights, const at::Tensor& shared, std::optional<at::Tensor> lm_head_bias,
                             const Florence2TextConfig& config, const nn::LinearPolicy& policy)
    : config_(config),
      shared_{shared},
      lm_head_bias_(std::move(lm_head_bias)),
      embed_scale_(config.scale_embedding ? std::sqrt(static_cast<double>(config.d_model)) : 1.0) {
  const std::int64_t table_rows = config.max_position_embeddings + kPositionOffset;
  const nn::Weights encoder = weights["encoder"], decoder = weights["decoder"];
  encoder_positions_ = encoder["embed_positions"].get("weight", {table_rows, config.d_model});
  encoder_layernorm_embedding_ = nn::LayerNorm::load(encoder, "layernorm_embedding", config.d_model, 1e-5);
  for (std::int64_t i = 0; i < config.encoder_layers; ++i) encoder_layers_.emplace_back(encoder["layers"][i], config, policy);
  decoder_positions_ = decoder["embed_positions"].get("weight", {table_rows, config.d_model});
  decoder_layernorm_embedding_ = nn::LayerNorm::load(decoder, "layernorm_embedding", config.d_model, 1e-5);
  for (std::int64_t i = 0; i < config.decoder_layers; ++i) decoder_layers_.emplace_back(decoder["layers"][i], config, policy);
}

at::Tensor LanguageModel::embed(const at::Tensor& ids) const {
  const at::Tensor embedded = shared_(ids);
  return embed_scale_ == 1.0 ? embedded : embedded * embed_scale_;
}

at::Tensor LanguageModel::encode(const at::Tensor& inputs_embeds) const {
  at::Tensor h = inputs_embeds + positions(encoder_positions_, 0, inputs_embeds.size(1), "encoder input");
  h = encoder_layernorm_embedding_(h);
  for (const EncoderLayer& layer : encoder_layers_) h = layer(h);
  return h;
}

DecoderState LanguageModel::start_decoding(const at::Tensor& encoder_output, std::int64_t sequences,
                                           std::int64_t capacity, std::int64_t encoder_capacity) const {
  if (capacity + kPositionOffset > decoder_positions_.size(0)) capacity = decoder_positions_.size(0) - kPositionOffset;
  const std::int64_t batch = encoder_output.size(0);
  if (batch < 1 || sequences % batch != 0) {
    throw InvalidArgumentError(fmt::format("{} decoder sequences do not split evenly over a batch of {} encoder outputs",
                                           sequences, batch));
  }
  DecoderState state;
  const std::int64_t heads = config_.decoder_attention_heads, head_dim = config_.d_model / heads;
  const bool fixed_shape = encoder_capacity > 0;
  for (const DecoderLayer& layer : decoder_layers_) {
    state.self_attention.emplace_back(sequences, heads, capacity, head_dim, encoder_output.options());
    if (fixed_shape) {
      const auto buffer = [&] { return at::zeros({batch, heads, encoder_capacity, head_dim}, encoder_output.options()); };
      state.cross_attention.emplace_back(buffer(), buffer());
      continue;
    }
    const CrossAttention& cross = layer.encoder_attn;
    // The sequences of an image (its beams, consecutive) attend to the same encoder output: computed once per
    // image and expanded per sequence (transformers' _expand_inputs_for_generation: repeat_interleave): for one
    // image a view (stride 0 over the beams) of one contiguous copy, which the CPU's single-query attention reads
    // once for all beams.
    const auto per_sequence = [&](const at::Tensor& t) {
      const at::Tensor heads_first = split_heads(t, cross.heads).contiguous();
      return heads_first.unsqueeze(1)
          .expand({batch, sequences / batch, heads_first.size(1), heads_first.size(2), heads_first.size(3)})
          .reshape({sequences, heads_first.size(1), heads_first.size(2), heads_first.size(3)});
    };
    const std::vector<at::Tensor> kv = cross.kv_proj(encoder_output);
    state.cross_attention.emplace_back(per_sequence(kv[0]), per_sequence(kv[1]));
  }
  if (fixed_shape) {
    state.encoder_last = at::zeros({1}, encoder_output.options().dtype(at::kLong));
    restart_decoding(state, encoder_output);
  }
  return state;
}

void LanguageModel::restart_decoding(DecoderState& state, const at::Tensor& encoder_output) const {
  if (!state.fixed_shape()) throw InvalidArgumentError("restart_decoding needs a fixed-shape decoder state");
  const std::int64_t length = encoder_output.size(1), encoder_capacity = state.cross_attention.front().first.size(2);
  if (length < 1 || length > encoder_capacity) {
    throw InvalidArgumentError(fmt::format("an encoder output of {} positions does not fit this decoder state's {}",
                                           length, encoder_capacity));
  }
  const std::int64_t batch = encoder_output.size(0), images = state.cross_attention.front().first.size(0);
  if (batch != images) {
    throw InvalidArgumentError(fmt::format("a decoder state for {} images cannot take a batch of {} encoder outputs",
                                           images, batch));
  }
  // Each image's keys and values into the filled part of its buffers; what lies past it is never read.
  for (std::size_t i = 0; i < decoder_layers_.size(); ++i) {
    const CrossAttention& cross = decoder_layers_[i].encoder_attn;
    auto& [keys, values] = state.cross_attention[i];
    const std::vector<at::Tensor> kv = cross.kv_proj(encoder_output);
    keys.narrow(2, 0, length).copy_(split_heads(kv[0], cross.heads));
    values.narrow(2, 0, length).copy_(split_heads(kv[1], cross.heads));
  }
  state.encoder_last.fill_(length - 1);
}

at::Tensor LanguageModel::decode(const at::Tensor& ids, DecoderState& state) const {
  if (state.fixed_shape()) throw InvalidArgumentError("decode needs a decoder state that is not fixed-shape");
  at::Tensor h = embed(ids) + positions(decoder_positions_, state.length(), ids.size(1), "decoder output");
  const nn::LayerNorm* norm = &decoder_layernorm_embedding_;  // the norm h is still to take
  for (std::size_t i = 0; i < decoder_layers_.size(); ++i) {
    h = decoder_layers_[i](h, *norm, state.self_attention[i], state.cross_attention[i], nullptr);
    norm = &decoder_layers_[i].final_layer_norm;
  }
  return logits(h, *norm);
}

at::Tensor LanguageModel::decode_step(const at::Tensor& ids, const at::Tensor& position, DecoderState& state) const {
  if (!state.fixed_shape()) throw InvalidArgumentError("decode_step needs a fixed-shape decoder state");
  const DeviceStep step{position, state.encoder_last};
  at::Tensor h = embed(ids) + decoder_positions_.index_select(0, position + kPositionOffset);
  const nn::LayerNorm* norm = &decoder_layernorm_embedding_;  // the norm h is still to take
  for (std::size_t i = 0; i < decoder_layers_.size(); ++i) {
    h = decoder_layers_[i](h, *norm, state.self_attention[i], state.cross_attention[i], &step);
    norm = &decoder_layers_[i].final_layer_norm;
  }
  return logits(h.select(1, 0), *norm);
}

at::Tensor LanguageModel::logits(const at::Tensor& h, const nn::LayerNorm& norm) const {
  // One gemm with the norm fused (CUDA, a few rows: one tensor-core GEMV, where a norm, a cuBLAS GEMM and a bias
  // add ran; and no cuBLAS call in a recorded step, whose capture stream would keep a cuBLAS workspace of its
  // own); elsewhere the same composition as before (the norm, the matmul, the bias added).
  return ops::gemm_dense(h, shared_.weight, lm_head_bias_, norm.as_linear_input()).to(at::kFloat);
}

void LanguageModel::reorder(DecoderState& state, const at::Tensor& order, const std::optional<at::Tensor>& position) const {
  const at::Tensor on_device = order.to(state.self_attention.front().keys().device());
  if (!state.fixed_shape()) {
    for (nn::KVCache& cache : state.self_attention) cache.reorder(on_device);
    return;
  }
  if (!position) throw InvalidArgumentError("reordering a fixed-shape decoder state needs the step's position");
  std::vector<at::Tensor> caches;
  caches.reserve(2 * state.self_attention.size());
  for (const nn::KVCache& cache : state.self_attention) {
    caches.push_back(cache.keys());
    caches.push_back(cache.values());
  }
  ops::reorder_cache_rows(caches, on_device, *position);
}

bool LanguageModel::capturable() const {
  auto synchronizes = [](const quant::QuantizedLinear* layer) { return layer->synchronizes(); };
  for (const DecoderLayer& l : decoder_layers_) {
    std::vector<const quant::QuantizedLinear*> layers = l.self_attn.qkv_proj.layers();
    for (const quant::QuantizedLinear* layer : l.encoder_attn.kv_proj.layers()) layers.push_back(layer);
    for (const nn::Linear* linear : {&l.self_attn.out_proj, &l.encoder_attn.q_proj, &l.encoder_attn.out_proj, &l.fc1,
                                     &l.fc2}) {
      layers.push_back(&linear->layer());
    }
    if (std::any_of(layers.begin(), layers.end(), synchronizes)) return false;
  }
  return true;
}

}  // namespace imagetotext::florence2
