#include "florence2_vision.hpp"

#include <ATen/ops/arange.h>
#include <ATen/ops/cat.h>
#include <ATen/ops/constant_pad_nd.h>
#include <ATen/ops/conv2d.h>
#include <ATen/ops/cos.h>
#include <ATen/ops/exp.h>
#include <ATen/ops/gelu.h>
#include <ATen/ops/sin.h>
#include <ATen/ops/empty.h>
#include <fmt/format.h>

#include <algorithm>
#include <cmath>

#include "imagetotext/core/error.hpp"
#include "imagetotext/nn/attention.hpp"

namespace imagetotext::florence2 {

namespace {
// [B, C, H, W] <-> [B, H*W, C], token index h*W + w.
at::Tensor to_tokens(const at::Tensor& x) { return x.flatten(2).transpose(1, 2); }
at::Tensor to_map(const at::Tensor& tokens, std::int64_t height, std::int64_t width) {
  return tokens.transpose(1, 2).reshape({tokens.size(0), tokens.size(2), height, width});
}
at::Tensor layer_norm_channels(const nn::LayerNorm& norm, const at::Tensor& x) {
  return norm(x.permute({0, 2, 3, 1})).permute({0, 3, 1, 2});
}
}  // namespace

DepthwiseConv::DepthwiseConv(const nn::Weights& weights, std::int64_t channels)
    : weight(weights.get("weight", {channels, 1, 3, 3})), bias(weights.get("bias", {channels})) {}

at::Tensor DepthwiseConv::operator()(const at::Tensor& x) const {
  return at::conv2d(x, weight, bias, /*stride=*/1, /*padding=*/1, /*dilation=*/1, /*groups=*/weight.size(0));
}

ConvEmbed::ConvEmbed(const nn::Weights& weights, const Florence2VisionConfig& config, std::int64_t stage)
    : stride(config.patch_stride[stage]), padding(config.patch_padding[stage]), pre_norm(config.patch_prenorm[stage]) {
  const std::int64_t in = stage == 0 ? config.in_channels : config.embed_dim[stage - 1];
  const std::int64_t out = config.embed_dim[stage];
  const std::int64_t k = config.patch_size[stage];
  weight = weights["conv"].get("weight", {out, in, k, k});
  bias = weights["conv"].get("bias", {out});
  norm = nn::LayerNorm::load(weights, "norm", pre_norm ? in : out, 1e-5);
}

at::Tensor ConvEmbed::operator()(const at::Tensor& x) const {
  at::Tensor h = pre_norm ? layer_norm_channels(norm, x) : x;
  h = at::conv2d(h, weight, bias, stride, padding);
  return pre_norm ? h : layer_norm_channels(norm, h);
}

Mlp::Mlp(const nn::Weights& weights, std::int64_t dim, std::int64_t hidden, const nn::LinearPolicy& policy)
    : fc1(nn::Linear::load(weights, "fc1", policy, dim, hidden)),
      fc2(nn::Linear::load(weights, "fc2", policy, hidden, dim)) {}

at::Tensor Mlp::operator()(const at::Tensor& x, const at::Tensor& residual) const {
  return fc2(fc1(x, {.gelu = true}), {.residual = residual});
}

SpatialBlock::SpatialBlock(const nn::Weights& weights, const Florence2VisionConfig& config, std::int64_t stage,
                           const nn::LinearPolicy& policy)
    : conv1(weights["conv1"], config.embed_dim[stage]),
      norm1(nn::LayerNorm::load(weights, "norm1", config.embed_dim[stage], 1e-5)),
      qkv(nn::Linear::load(weights["window_attn"], "qkv", policy, config.embed_dim[stage], 3 * config.embed_dim[stage])),
      proj(nn::Linear::load(weights["window_attn"], "proj", policy, config.embed_dim[stage], config.embed_dim[stage])),
      conv2(weights["conv2"], config.embed_dim[stage]),
      norm2(nn::LayerNorm::load(weights, "norm2", config.embed_dim[stage], 1e-5)),
      ffn(weights["ffn"], config.embed_dim[stage],
          static_cast<std::int64_t>(static_cast<double>(config.embed_dim[stage]) * config.mlp_ratio), policy),
      heads(config.num_heads[stage]),
      window(config.window_size) {}

at::Tensor SpatialBlock::window_attention(const at::Tensor& tokens, std::int64_t height, std::int64_t width) const {
  const std::int64_t batch = tokens.size(0), dim = tokens.size(2);
  // Zero-pad right and bottom to whole windows, cut into window x window tiles (tiles and the tokens
  // inside them row-major), attend inside each tile, stitch back and crop.
  const std::int64_t pad_w = (window - width % window) % window, pad_h = (window - height % window) % window;
  const at::Tensor grid = at::constant_pad_nd(tokens.reshape({batch, height, width, dim}), {0, 0, 0, pad_w, 0, pad_h});
  const std::int64_t rows = (height + pad_h) / window, cols = (width + pad_w) / window;
  const at::Tensor windows = grid.view({batch, rows, window, cols, window, dim})
                                 .permute({0, 1, 3, 2, 4, 5})
                                 .reshape({batch * rows * cols, window * window, dim});
  const std::int64_t n = windows.size(0), len = windows.size(1), head_dim = dim / heads;
  const at::Tensor qkv_out = qkv(windows).reshape({n, len, 3, heads, head_dim}).permute({2, 0, 3, 1, 4});
  const at::Tensor attended = nn::scaled_dot_product_attention(qkv_out[0], qkv_out[1], qkv_out[2], std::nullopt,
                                                               false, 1.0 / std::sqrt(static_cast<double>(head_dim)));
  const at::Tensor projected = proj(attended.transpose(1, 2).reshape({n, len, dim}));
  return projected.view({batch, rows, cols, window, window, dim})
      .permute({0, 1, 3, 2, 4, 5})
      .reshape({batch, rows * window, cols * window, dim})
      .narrow(1, 0, height)
      .narrow(2, 0, width)
      .reshape({batch, height * width, dim});
}

at::Tensor SpatialBlock::operator()(const at::Tensor& x) const {
  const std::int64_t height = x.size(2), width = x.size(3);
  at::Tensor t = to_tokens(x + conv1(x));
  t = t + window_attention(norm1(t), height, width);
  at::Tensor map = to_map(t, height, width);
  t = to_tokens(map + conv2(map));
  t = ffn(norm2(t), t);
  return to_map(t, height, width);
}

ChannelBlock::ChannelBlock(const nn::Weights& weights, const Florence2VisionConfig& config, std::int64_t stage,
                           const nn::LinearPolicy& policy)
    : conv1(weights["conv1"], config.embed_dim[stage]),
      norm1(nn::LayerNorm::load(weights, "norm1", config.embed_dim[stage], 1e-5)),
      qkv(nn::Linear::load(weights["channel_attn"], "qkv", policy, config.embed_dim[stage], 3 * config.embed_dim[stage])),
      proj(nn::Linear::load(weights["channel_attn"], "proj", policy, config.embed_dim[stage], config.embed_dim[stage])),
      conv2(weights["conv2"], config.embed_dim[stage]),
      norm2(nn::LayerNorm::load(weights, "norm2", config.embed_dim[stage], 1e-5)),
      ffn(weights["ffn"], config.embed_dim[stage],
          static_cast<std::int64_t>(static_cast<double>(config.embed_dim[stage]) * config.mlp_ratio), policy),
      groups(config.num_groups[stage]) {}

at::Tensor ChannelBlock::channel_attention(const at::Tensor& tokens, const at::Tensor& residual) const {
  const std::int64_t batch = tokens.size(0), n = tokens.size(1), dim = tokens.size(2), group_dim = dim / groups;
  // Per group, the group_dim channels are the sequence and the n tokens the features: q, k, v [B, G, d, N];
  // the scale is the token count's, not the feature width's.
  const at::Tensor qkv_out = qkv(tokens).reshape({batch, n, 3, groups, group_dim}).permute({2, 0, 3, 4, 1});
  const double scale = 1.0 / std::sqrt(static_cast<double>(n));
  // ATen's attention for this shape (head_dim = n, in the thousands) is its math path, which computes in float32:
  // at the first stage's 36864 tokens each float32 copy of q, k, v or the output is 18 MB a group set, the vision
  // tower's memory peak. A few groups a call keep those copies near kChannelAttentionFloatBytes.
  constexpr std::int64_t kChannelAttentionFloatBytes = 8 << 20;
  const std::int64_t per_call =
      std::max<std::int64_t>(1, kChannelAttentionFloatBytes / (batch * n * group_dim * std::int64_t{4}));
  at::Tensor attended;
  if (per_call >= groups) {
    attended = nn::scaled_dot_product_attention(qkv_out[0], qkv_out[1], qkv_out[2], std::nullopt, false, scale);
  } else {
    attended = at::empty({batch, groups, group_dim, n}, tokens.options());
    for (std::int64_t g = 0; g < groups; g += per_call) {
      const std::int64_t count = std::min(per_call, groups - g);
      attended.narrow(1, g, count)
          .copy_(nn::scaled_dot_product_attention(qkv_out[0].narrow(1, g, count), qkv_out[1].narrow(1, g, count),
                                                  qkv_out[2].narrow(1, g, count), std::nullopt, false, scale));
    }
  }
  return proj(attended.permute({0, 3, 1, 2}).reshape({batch, n, dim}), {.residual = residual});  // channel g * d + i
}

at::Tensor ChannelBlock::operator()(const at::Tensor& x) const {
  const std::int64_t height = x.size(2), width = x.size(3);
  at::Tensor t = to_tokens(x + conv1(x));
  t = channel_attention(norm1(t), t);
  at::Tensor map = to_map(t, height, width);
  t = to_tokens(map + conv2(map));
  t = ffn(norm2(t), t);
  return to_map(t, height, width);
}

VisionTower::VisionTower(const nn::Weights& weights, const Florence2VisionConfig& config,
                         const nn::LinearPolicy& policy) {
  for (std::int64_t s = 0; s < config.num_stages(); ++s) {
    convs_.emplace_back(weights["convs"][s], config, s);
    auto& stage = blocks_.emplace_back();
    for (std::int64_t b = 0; b < config.depths[s]; ++b) {
      const nn::Weights block = weights["blocks"][s][b];
      stage.emplace_back(SpatialBlock(block["spatial_block"], config, s, policy),
                         ChannelBlock(block["channel_block"], config, s, policy));
    }
  }
}

at::Tensor VisionTower::operator()(const at::Tensor& pixel_values) const {
  at::Tensor x = pixel_values.to(convs_.front().weight.scalar_type());
  for (std::size_t s = 0; s < convs_.size(); ++s) {
    x = convs_[s](x);
    for (const auto& [spatial, channel] : blocks_[s]) x = channel(spatial(x));
  }
  return x;
}

at::Tensor cosine_temporal_table(std::int64_t max_positions, std::int64_t dim) {
  const std::int64_t half = dim / 2;
  const auto f32 = at::TensorOptions().dtype(at::kFloat);
  const at::Tensor frequencies = at::exp(at::arange(half, f32) * (-std::log(10000.0) / static_cast<double>(half)));
  const at::Tensor angles = at::arange(max_positions, f32).unsqueeze(1) * frequencies.unsqueeze(0);
  at::Tensor table = at::empty({max_positions, dim}, f32);
  table.slice(1, 0, dim, 2).copy_(at::sin(angles));
  table.slice(1, 1, dim, 2).copy_(at::cos(angles));
  return table;
}

Projector::Projector(const nn::Weights& weights, const Florence2VisionConfig& config, const nn::LinearPolicy& policy)
    : projection_(nn::Linear::load(weights, "image_projection", policy, config.embed_dim.back(), config.projection_dim)),
      norm_(nn::LayerNorm::load(weights, "image_proj_norm", config.projection_dim, 1e-5)) {
  const std::int64_t dim = config.embed_dim.back();
  const nn::Weights positions = weights["image_position_embed"];
  row_embeddings_ = positions["row_embeddings"].get("weight", {config.max_position_embeddings, dim / 2});
  column_embeddings_ = positions["column_embeddings"].get("weight", {config.max_position_embeddings, dim - dim / 2});
  const nn::Weights temporal = weights["visual_temporal_embed"];
  // The checkpoint stores the table as a buffer; an older save may lack it, and it is a fixed formula.
  const at::Tensor table = temporal.contains("pos_idx_to_embed")
                               ? temporal.get("pos_idx_to_embed", {config.max_temporal_embeddings, dim})
                               : cosine_temporal_table(config.max_temporal_embeddings, dim)
                                     .to(row_embeddings_.device(), row_embeddings_.scalar_type());
  temporal_row0_ = table[0];
}

at::Tensor Projector::operator()(const at::Tensor& features) const {
  const std::int64_t height = features.size(2), width = features.size(3);
  if (height > row_embeddings_.size(0) || width > column_embeddings_.size(0)) {
    throw InvalidArgumentError(fmt::format("the image feature map is {}x{}; Florence-2's position table covers {}x{}",
                                           height, width, row_embeddings_.size(0), column_embeddings_.size(0)));
  }
  // pos[h, w] = [column_embeddings[w] ; row_embeddings[h]]
  const at::Tensor columns = column_embeddings_.narrow(0, 0, width).unsqueeze(0).expand({height, width, -1});
  const at::Tensor rows = row_embeddings_.narrow(0, 0, height).unsqueeze(1).expand({height, width, -1});
  const at::Tensor positions = at::cat({columns, rows}, -1).permute({2, 0, 1}).unsqueeze(0);
  const at::Tensor tokens = to_tokens(features + positions) + temporal_row0_;
  const at::Tensor pooled = tokens.mean(1, /*keepdim=*/true);
  return norm_(projection_(at::cat({pooled, tokens}, 1)));
}

}  // namespace imagetotext::florence2
