#include "florence2_vision.hpp"

#include <ATen/ops/arange.h>
#include <ATen/ops/cat.h>
#include <ATen/ops/constant_pad_nd.h>
#include <ATen/ops/conv2d.h>
#include <ATen/ops/cos.h>
#include <ATen/ops/exp.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/matmul.h>
#include <ATen/ops/softmax.h>
#include <ATen/ops/sin.h>
#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <utility>

#include "imagetotext/core/error.hpp"
#include "imagetotext/nn/attention.hpp"

namespace imagetotext::florence2 {

namespace {
// [B, C, H, W] <-> [B, H*W, C], token index h*W + w. The tower keeps its maps channels-last, so both are views: the
// tokens are contiguous rows for the norms, the linear layers and the residual adds, and a convolution may read the
// same memory as NHWC (cuDNN's kernel; where ATen picks its NCHW depthwise kernel, it copies). In NCHW every
// LayerNorm copied its tokens contiguous first and every residual add ran strided: on the H100 large's tower took
// 12.7 ms of kernels so, 11.0 channels-last (benchmarks/results/image-side-kernels-h100-2026-11-24*).
at::Tensor to_tokens(const at::Tensor& x) { return x.flatten(2).transpose(1, 2); }
// As [B, H, W, C] permuted, not [B, C, N] reshaped: that gave a batch of one a batch stride of C, which ATen's
// memory-format check does not take for channels-last, so most convolutions copied the map to NCHW and back.
at::Tensor to_map(const at::Tensor& tokens, std::int64_t height, std::int64_t width) {
  return tokens.reshape({tokens.size(0), height, width, tokens.size(2)}).permute({0, 3, 1, 2});
}
at::Tensor channels_last(const at::Tensor& map) { return map.contiguous(at::MemoryFormat::ChannelsLast); }
at::Tensor layer_norm_channels(const nn::LayerNorm& norm, const at::Tensor& x) {
  return norm(x.permute({0, 2, 3, 1})).permute({0, 3, 1, 2});
}

// The most bytes a block's largest intermediate may take before the block runs it in pieces (token chunks, bands
// of window rows). Florence-2-large's first stage has 36864 tokens: its MLP's hidden activations alone are 72 MiB
// and the window attention's q/k/v 54 MiB, and whole they set a caption's peak GPU memory (issue 8: the weights +
// 200 MB, with the decoder's state). At 24 MiB only the first two stages run in pieces, their peaks below the
// channel attention's (its q/k/v whole, 54 MiB); 16 MiB cut the third stage's MLPs too, a few more kernels each
// for no lower peak.
constexpr std::int64_t kPieceBytes = std::int64_t{24} << 20;
std::int64_t pieces_for(std::int64_t bytes) { return std::max<std::int64_t>(1, (bytes + kPieceBytes - 1) / kPieceBytes); }

// x + conv(x), the add in place on the convolution's output (channels-last, as x); x by value, released here.
at::Tensor add_conv(at::Tensor x, const DepthwiseConv& conv) {
  at::Tensor sum = channels_last(conv(x));
  sum.add_(x);
  return sum;
}

// Both blocks' second half: map + conv(map), then the MLP over its tokens, back as a map.
at::Tensor conv_and_mlp(at::Tensor map, const DepthwiseConv& conv, const nn::LayerNorm& norm, const Mlp& mlp) {
  const std::int64_t height = map.size(2), width = map.size(3);
  map = add_conv(std::move(map), conv);
  at::Tensor tokens = mlp(norm, to_tokens(map));
  map.reset();
  return to_map(tokens, height, width);
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

at::Tensor Mlp::operator()(const nn::LayerNorm& norm, const at::Tensor& tokens) const {
  const std::int64_t batch = tokens.size(0), count = tokens.size(1);
  const auto mlp = [&](const at::Tensor& x) { return fc2(fc1(norm(x), {.gelu = true}), {.residual = x}); };
  const std::int64_t pieces = pieces_for(batch * count * fc1.layer().out_features * tokens.element_size());
  if (pieces == 1) return mlp(tokens);
  at::Tensor out = at::empty({batch, count, tokens.size(2)}, tokens.options());
  const std::int64_t chunk = (count + pieces - 1) / pieces;
  for (std::int64_t first = 0; first < count; first += chunk) {
    const std::int64_t length = std::min(chunk, count - first);
    out.narrow(1, first, length).copy_(mlp(tokens.narrow(1, first, length)));
  }
  return out;
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

void SpatialBlock::add_window_attention(const at::Tensor& tokens, std::int64_t height, std::int64_t width) const {
  // Windows never cross a band of whole window rows, so each band attends alone (the last one padded as the whole
  // map would be): its q/k/v, not the map's, are what the band holds.
  const std::int64_t window_rows = (height + window - 1) / window;
  const std::int64_t pieces = pieces_for(3 * tokens.size(0) * tokens.size(1) * tokens.size(2) * tokens.element_size());
  const std::int64_t rows_per_band = (window_rows + pieces - 1) / pieces;
  for (std::int64_t top = 0; top < height; top += rows_per_band * window) {
    const std::int64_t band_height = std::min(rows_per_band * window, height - top);
    const at::Tensor band = tokens.narrow(1, top * width, band_height * width);
    band.add_(window_attention(norm1(band), band_height, width));
  }
}

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

at::Tensor SpatialBlock::operator()(at::Tensor x) const {
  const std::int64_t height = x.size(2), width = x.size(3);
  at::Tensor map = add_conv(std::move(x), conv1);
  add_window_attention(to_tokens(map), height, width);  // in place on map
  return conv_and_mlp(std::move(map), conv2, norm2, ffn);
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

at::Tensor ChannelBlock::add_channel_attention(const at::Tensor& tokens) const {
  const std::int64_t batch = tokens.size(0), n = tokens.size(1), dim = tokens.size(2), group_dim = dim / groups;
  // Per group, the group_dim channels are the sequence and the n tokens the features: q, k, v [B, G, d, N];
  // the scale is the token count's, not the feature width's.
  at::Tensor qkv_out = qkv(norm1(tokens)).view({batch, n, 3, groups, group_dim}).permute({2, 0, 3, 4, 1});
  const double scale = 1.0 / std::sqrt(static_cast<double>(n));
  // In float32 (as ATen's attention computes this shape, head_dim = n in the thousands, on its math path), a few
  // groups at a time: at the first stage's 36864 tokens each float32 copy of q, k or v is 4.5 MiB a group, and
  // these are written one after the other (q and k released before v is made), so the copies alive at once stay
  // near 2 x kChannelAttentionFloatBytes. Each step writes its groups into the output as the projection reads it
  // ([B, N, C], channel g * d + i), so no copy of the whole precedes the projection.
  constexpr std::int64_t kChannelAttentionFloatBytes = 8 << 20;
  const std::int64_t per_call =
      std::max<std::int64_t>(1, kChannelAttentionFloatBytes / (batch * n * group_dim * std::int64_t{4}));
  const at::Tensor attended = at::empty({batch, n, dim}, tokens.options());
  const at::Tensor attended_groups = attended.view({batch, n, groups, group_dim}).permute({0, 2, 3, 1});
  for (std::int64_t g = 0; g < groups; g += per_call) {
    const std::int64_t count = std::min(per_call, groups - g);
    const auto part = [&](std::int64_t which) { return qkv_out[which].narrow(1, g, count).to(at::kFloat); };
    const at::Tensor weights = at::softmax(at::matmul(part(0), part(1).transpose(-1, -2)).mul_(scale), -1);
    attended_groups.narrow(1, g, count).copy_(at::matmul(weights, part(2)));
  }
  qkv_out.reset();
  return proj(attended, {.residual = tokens});
}

at::Tensor ChannelBlock::operator()(at::Tensor x) const {
  const std::int64_t height = x.size(2), width = x.size(3);
  at::Tensor map = add_conv(std::move(x), conv1);
  map = to_map(add_channel_attention(to_tokens(map)), height, width);
  return conv_and_mlp(std::move(map), conv2, norm2, ffn);
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
    x = channels_last(convs_[s](x));
    for (const auto& [spatial, channel] : blocks_[s]) x = channel(spatial(std::move(x)));
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
