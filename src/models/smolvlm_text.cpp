#include "imagetotext/models/smolvlm_text.hpp"

#include <ATen/ops/arange.h>
#include <c10/util/StringUtil.h>
#include <fmt/format.h>

#include <cmath>
#include <tuple>

#include "../ops/layer_ops.hpp"
#include "imagetotext/core/error.hpp"

namespace imagetotext::smolvlm {

TextModel TextModel::load(const nn::Weights& text_weights, const nn::Weights& head_weights, const SmolVLMConfig& config,
                          const nn::LinearPolicy& policy) {
  const SmolVLMTextConfig& c = config.text;
  const std::string& source = text_weights.source().string();
  if (c.num_key_value_heads <= 0 || c.num_attention_heads % c.num_key_value_heads != 0) {
    throw CheckpointError(fmt::format("checkpoint {}: {} attention heads are not a multiple of {} key/value heads",
                                      source, c.num_attention_heads, c.num_key_value_heads));
  }
  if (c.hidden_act != "silu") {
    throw CheckpointError(fmt::format("checkpoint {}: text hidden_act '{}' is not implemented (silu is)", source,
                                      c.hidden_act));
  }
  TextModel text;
  text.config_ = c;
  const std::int64_t hidden = c.hidden_size, q_width = c.num_attention_heads * c.head_dim,
                     kv_width = c.num_key_value_heads * c.head_dim;
  text.embed_tokens_ = nn::Embedding::load(text_weights, "embed_tokens", c.vocab_size, hidden);
  const nn::Weights layers = text_weights["layers"];
  text.layers_.reserve(static_cast<std::size_t>(c.num_hidden_layers));
  for (std::int64_t i = 0; i < c.num_hidden_layers; ++i) {
    const nn::Weights layer = layers[i];
    const nn::Weights attn = layer["self_attn"];
    const nn::Weights mlp = layer["mlp"];
    text.layers_.push_back(DecoderLayer{
        nn::RMSNorm::load(layer, "input_layernorm", hidden, c.rms_norm_eps),
        nn::FusedLinear::load(attn, {"q_proj", "k_proj", "v_proj"}, policy, hidden, {q_width, kv_width, kv_width}),
        nn::Linear::load(attn, "o_proj", policy, q_width, hidden),
        nn::RMSNorm::load(layer, "post_attention_layernorm", hidden, c.rms_norm_eps),
        nn::FusedLinear::load(mlp, {"gate_proj", "up_proj"}, policy, hidden,
                              {c.intermediate_size, c.intermediate_size}),
        nn::Linear::load(mlp, "down_proj", policy, c.intermediate_size, hidden),
    });
  }
  text.norm_ = nn::RMSNorm::load(text_weights, "norm", hidden, c.rms_norm_eps);
  if (config.tie_word_embeddings) {
    text.lm_head_.emplace(nn::Linear::load(text_weights, "embed_tokens", nn::LinearPolicy{}, hidden, c.vocab_size));
  } else {
    text.lm_head_.emplace(nn::Linear::load(head_weights, "lm_head", policy, hidden, c.vocab_size));
  }
  const nn::Placement& placement = text_weights.placement();
  text.rotary_ = nn::RotaryEmbedding(c.head_dim, c.rope_theta, c.max_position_embeddings, placement.device,
                                     placement.dtype);
  return text;
}

TextCache TextModel::new_cache(std::int64_t batch, std::int64_t capacity) const {
  const nn::Placement placement{embed_tokens_.weight.device(), embed_tokens_.weight.scalar_type()};
  TextCache cache;
  cache.reserve(layers_.size());
  for (std::size_t i = 0; i < layers_.size(); ++i) {
    cache.emplace_back(batch, config_.num_key_value_heads, capacity, config_.head_dim,
                       at::TensorOptions().device(placement.device).dtype(placement.dtype));
  }
  return cache;
}

namespace {
// The rotation of x [batch, heads, length, head_dim] with cos, sin [batch * length, head_dim] (each row at its
// own positions): the rows laid side by side as one sequence, so the one fused kernel serves.
at::Tensor rotary_per_row(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin) {
  const std::int64_t batch = x.size(0), heads = x.size(1), length = x.size(2), dim = x.size(3);
  const at::Tensor side_by_side = x.transpose(0, 1).reshape({1, heads, batch * length, dim});
  return ops::rotary(side_by_side, cos, sin).view({heads, batch, length, dim}).transpose(0, 1);
}
}  // namespace

at::Tensor TextModel::attention(const DecoderLayer& layer, const at::Tensor& h, nn::KVCache& cache,
                                const at::Tensor& cos, const at::Tensor& sin, const DeviceStep* step,
                                const LeftPadding* padding) const {
  const std::int64_t batch = h.size(0), length = h.size(1), head_dim = config_.head_dim;
  auto split_heads = [&](const at::Tensor& t, std::int64_t heads) {
    return t.view({batch, length, heads, head_dim}).transpose(1, 2);
  };
  auto rotate = [&](const at::Tensor& t) {
    return padding ? rotary_per_row(t, cos, sin) : nn::apply_rotary(t, cos, sin);
  };
  const std::vector<at::Tensor> qkv = layer.qkv_proj(h, layer.input_layernorm.as_linear_input());
  const at::Tensor q = split_heads(qkv[0], config_.num_attention_heads);
  const at::Tensor k = split_heads(qkv[1], config_.num_key_value_heads);
  const at::Tensor v = split_heads(qkv[2], config_.num_key_value_heads);
  at::Tensor out;
  if (step) {
    // cos, sin: one row at the step's position, or one per row of a left-padded batch.
    out = cache.attend_at(q, k, v, step->position, 1.0 / std::sqrt(static_cast<double>(head_dim)), cos, sin,
                          padding ? std::optional<at::Tensor>(padding->first) : std::nullopt);
  } else if (padding) {
    const auto [keys, values] = cache.append(rotate(k), v);
    out = nn::scaled_dot_product_attention(rotate(q), keys, values, padding->mask, /*causal=*/false);
  } else {
    const auto [keys, values] = cache.append(rotate(k), v);
    // One new token attends to everything before it; a block of tokens attends causally.
    out = nn::scaled_dot_product_attention(rotate(q), keys, values, std::nullopt, /*causal=*/length > 1);
  }
  return out.transpose(1, 2).reshape({batch, length, config_.num_attention_heads * head_dim});
}

at::Tensor TextModel::layers_forward(at::Tensor h, TextCache& cache, const at::Tensor& cos, const at::Tensor& sin,
                                     const DeviceStep* step, const LeftPadding* padding) const {
  if (cache.size() != layers_.size()) {
    throw InvalidArgumentError(fmt::format("the cache has {} layers, the model {}", cache.size(), layers_.size()));
  }
  // Each norm runs as the input of the linear layer that reads it, the gated activation as the down
  // projection's input, and each residual step as the residual of the layer that ends it (ops::GemmFusion):
  // in the decode step of one sequence none of them has a kernel of its own.
  for (std::size_t i = 0; i < layers_.size(); ++i) {
    const DecoderLayer& layer = layers_[i];
    h = layer.o_proj(attention(layer, h, cache[i], cos, sin, step, padding), {.residual = h});
    const at::Tensor gate_up = layer.gate_up_proj.joined(h, layer.post_attention_layernorm.as_linear_input());
    h = layer.down_proj(gate_up, {.gated = true, .residual = h});
  }
  return h;
}

at::Tensor TextModel::forward(const at::Tensor& embeddings, TextCache& cache,
                             const std::optional<at::Tensor>& padding) const {
  if (cache.empty()) throw InvalidArgumentError("the cache has no layers");
  const std::int64_t start = cache.front().length(), length = embeddings.size(1);
  if (!padding) {
    const auto [cos, sin] = rotary_.at_positions(start, length);
    return norm_(layers_forward(embeddings, cache, cos, sin, nullptr, nullptr));
  }
  const std::int64_t batch = embeddings.size(0);
  if (padding->dim() != 1 || padding->size(0) != batch) {
    throw InvalidArgumentError(fmt::format("padding must be [{}], got {}", batch, c10::str(padding->sizes())));
  }
  if (start + length > rotary_.max_positions()) {
    throw InvalidArgumentError(
        fmt::format("{} positions are past the model's {}", start + length, rotary_.max_positions()));
  }
  const at::Tensor first = padding->to(embeddings.device()).view({batch, 1});
  const at::Tensor query_at = at::arange(start, start + length, first.options());  // cache positions
  // Row b's position ids: its cache positions less its padding, 0 on the padding itself (as transformers).
  const at::Tensor positions = (query_at.view({1, length}) - first).clamp_min(0).reshape({-1});
  const auto [cos, sin] = rotary_.at_positions(positions);
  // Query i sees keys j <= i from the row's first real one on; a padding query sees itself only, so no row of
  // the softmax is empty (its output is never read by a real token).
  const at::Tensor key_at = at::arange(start + length, first.options()).view({1, 1, start + length});
  const at::Tensor query_col = query_at.view({1, length, 1});
  const at::Tensor mask = key_at.le(query_col)
                              .logical_and(key_at.ge(first.view({batch, 1, 1})).logical_or(key_at.eq(query_col)))
                              .unsqueeze(1);
  const LeftPadding left{first.view({batch}), mask};
  return norm_(layers_forward(embeddings, cache, cos, sin, nullptr, &left));
}

at::Tensor TextModel::decode_step(const at::Tensor& token, const at::Tensor& position, TextCache& cache,
                                  const std::optional<at::Tensor>& padding) const {
  if (cache.empty()) throw InvalidArgumentError("the cache has no layers");
  if (cache.front().capacity() > rotary_.max_positions()) {
    throw InvalidArgumentError(fmt::format("a cache of {} positions is past the model's {} positions",
                                           cache.front().capacity(), rotary_.max_positions()));
  }
  const DeviceStep step{position};
  if (!padding) {
    const auto [cos, sin] = rotary_.at_positions(position);
    return final_logits(layers_forward(embed(token), cache, cos, sin, &step, nullptr).select(1, 0));
  }
  // Each row at its own position: the step's cache position less the row's padding.
  const auto [cos, sin] = rotary_.at_positions(position - *padding);
  const LeftPadding left{*padding, at::Tensor()};
  return final_logits(layers_forward(embed(token), cache, cos, sin, &step, &left).select(1, 0));
}

bool TextModel::capturable() const {
  for (const DecoderLayer& l : layers_) {
    std::vector<const quant::QuantizedLinear*> layers = l.qkv_proj.layers();
    for (const quant::QuantizedLinear* layer : l.gate_up_proj.layers()) layers.push_back(layer);
    layers.push_back(&l.o_proj.layer());
    layers.push_back(&l.down_proj.layer());
    for (const quant::QuantizedLinear* layer : layers) {
      if (layer->synchronizes()) return false;
    }
  }
  return !lm_head_->layer().synchronizes();
}

}  // namespace imagetotext::smolvlm
