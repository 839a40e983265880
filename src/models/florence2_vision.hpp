// Florence-2's image side: the DaViT vision tower and the projector that turns its last feature map into
// the BART encoder's image tokens. Internal to the library (include/imagetotext/models/florence2.hpp is
// the public face); weight names are the native layout's (the original layout is mapped onto them).
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <vector>

#include "imagetotext/models/florence2_config.hpp"
#include "imagetotext/nn/layers.hpp"
#include "imagetotext/nn/linear.hpp"
#include "imagetotext/nn/weights.hpp"

namespace imagetotext::florence2 {

// 3x3 depthwise convolution, the blocks' position encoding (added to its input by the caller).
struct DepthwiseConv {
  at::Tensor weight;  // [C, 1, 3, 3]
  at::Tensor bias;
  DepthwiseConv(const nn::Weights& weights, std::int64_t channels);
  at::Tensor operator()(const at::Tensor& x) const;
};

// Patch embedding of one stage: strided convolution, LayerNorm over channels before it (stages 1..) or
// after it (stage 0).
struct ConvEmbed {
  at::Tensor weight;
  at::Tensor bias;
  nn::LayerNorm norm;
  std::int64_t stride;
  std::int64_t padding;
  bool pre_norm;
  ConvEmbed(const nn::Weights& weights, const Florence2VisionConfig& config, std::int64_t stage);
  at::Tensor operator()(const at::Tensor& x) const;
};

struct Mlp {
  nn::Linear fc1;
  nn::Linear fc2;
  Mlp(const nn::Weights& weights, std::int64_t dim, std::int64_t hidden, const nn::LinearPolicy& policy);
  // tokens + fc2(gelu(fc1(norm(tokens)))) for tokens [B, N, C] (any strides), the GELU and the add in place on
  // the layers' outputs (ops::GemmFusion); in token chunks where the hidden activations would be large.
  at::Tensor operator()(const nn::LayerNorm& norm, const at::Tensor& tokens) const;
};

// Spatial block: self-attention inside non-overlapping window x window patches.
struct SpatialBlock {
  DepthwiseConv conv1;
  nn::LayerNorm norm1;
  nn::Linear qkv;
  nn::Linear proj;
  DepthwiseConv conv2;
  nn::LayerNorm norm2;
  Mlp ffn;
  std::int64_t heads;
  std::int64_t window;
  SpatialBlock(const nn::Weights& weights, const Florence2VisionConfig& config, std::int64_t stage,
               const nn::LinearPolicy& policy);
  // [B, C, H, W] -> [B, C, H, W]; x by value, released once the block no longer needs it.
  at::Tensor operator()(at::Tensor x) const;

 private:
  // tokens [B, H*W, C] (a view of the block's map) += the window attention of norm1(tokens), in bands of
  // window rows.
  void add_window_attention(const at::Tensor& tokens, std::int64_t height, std::int64_t width) const;
  // The window attention of normed tokens [B, H*W, C] (H*W of a whole band of windows, the last band cropped).
  at::Tensor window_attention(const at::Tensor& tokens, std::int64_t height, std::int64_t width) const;
};

// Channel block: attention across channel groups, with the tokens as the features.
struct ChannelBlock {
  DepthwiseConv conv1;
  nn::LayerNorm norm1;
  nn::Linear qkv;
  nn::Linear proj;
  DepthwiseConv conv2;
  nn::LayerNorm norm2;
  Mlp ffn;
  std::int64_t groups;
  ChannelBlock(const nn::Weights& weights, const Florence2VisionConfig& config, std::int64_t stage,
               const nn::LinearPolicy& policy);
  // [B, C, H, W] -> [B, C, H, W]; x by value, released once the block no longer needs it.
  at::Tensor operator()(at::Tensor x) const;

 private:
  // tokens + the channel attention of norm1(tokens), [B, N, C].
  at::Tensor add_channel_attention(const at::Tensor& tokens) const;
};

// DaViT: per stage a patch embedding then depths[s] x (spatial block, channel block).
class VisionTower {
 public:
  VisionTower(const nn::Weights& weights, const Florence2VisionConfig& config, const nn::LinearPolicy& policy);
  at::Tensor operator()(const at::Tensor& pixel_values) const;  // [B, 3, H, W] -> [B, C_last, h, w]

 private:
  std::vector<ConvEmbed> convs_;
  std::vector<std::vector<std::pair<SpatialBlock, ChannelBlock>>> blocks_;
};

// Learned 2-D positions, the cosine temporal embedding of frame 0, [mean token ; tokens], Linear, LayerNorm.
class Projector {
 public:
  Projector(const nn::Weights& weights, const Florence2VisionConfig& config, const nn::LinearPolicy& policy);
  at::Tensor operator()(const at::Tensor& features) const;  // [B, C, h, w] -> [B, 1 + h*w, projection_dim]

 private:
  at::Tensor row_embeddings_;     // [max_pos, C / 2]
  at::Tensor column_embeddings_;  // [max_pos, C - C / 2]
  at::Tensor temporal_row0_;      // [C]: the temporal table's row for frame 0
  nn::Linear projection_;
  nn::LayerNorm norm_;
};

// The cosine table transformers' Florence2VisionPositionalEmbeddingCosine1D computes: [max_positions, dim],
// sin in even and cos in odd channels.
at::Tensor cosine_temporal_table(std::int64_t max_positions, std::int64_t dim);

}  // namespace imagetotext::florence2
