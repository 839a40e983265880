// SmolVLM's image side (transformers' Idefics3VisionTransformer and Idefics3Connector): a SigLIP encoder
// whose position ids follow NaViT (a tile smaller than the full image size, or padded, gets positions spread
// over the whole table), then the connector: pixel shuffle (space to depth by scale_factor) and one linear
// projection into the text model's width.
//
//   pixel_values [tiles, 3, H, W] --patch conv + position embedding--> [tiles, patches, vision width]
//     --encoder layer x N (pre-LN: attention, GELU-tanh MLP)--> post-layernorm
//     --pixel shuffle--> [tiles, patches / s^2, width * s^2] --proj--> [tiles, image_seq_len, text width]
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <optional>
#include <vector>

#include "imagetotext/models/smolvlm_config.hpp"
#include "imagetotext/nn/layers.hpp"
#include "imagetotext/nn/linear.hpp"
#include "imagetotext/nn/weights.hpp"

namespace imagetotext::smolvlm {

struct VisionEncoderLayer {
  nn::LayerNorm layer_norm1;
  nn::FusedLinear qkv_proj;  // q_proj, k_proj, v_proj: one GEMM
  nn::Linear out_proj;
  nn::LayerNorm layer_norm2;
  nn::Linear fc1, fc2;
};

class VisionTransformer {
 public:
  // Reads `embeddings.*`, `encoder.layers.<i>.*` and `post_layernorm.*` under `weights` (the checkpoint's
  // model.vision_model). Throws CheckpointError naming a missing or misshapen tensor.
  static VisionTransformer load(const nn::Weights& weights, const SmolVLMVisionConfig& config,
                                const nn::LinearPolicy& policy);

  // pixel_values [tiles, channels, H, W] in the model's dtype; patch_mask [tiles, H / patch, W / patch] bool
  // (true: a patch with at least one real pixel), or none when every patch is real.
  // Returns the last hidden state [tiles, patches, hidden_size].
  at::Tensor operator()(const at::Tensor& pixel_values, const std::optional<at::Tensor>& patch_mask) const;

  // The embeddings alone (patch convolution plus position embedding), for tests.
  at::Tensor embed(const at::Tensor& pixel_values, const std::optional<at::Tensor>& patch_mask) const;

  const SmolVLMVisionConfig& config() const noexcept { return config_; }

  // Whether operator() can be recorded in a CUDA graph: no layer waits for the host (LLM.int8 does).
  bool capturable() const;

 private:
  at::Tensor position_ids(const at::Tensor& patch_mask, at::ScalarType dtype) const;
  at::Tensor attention(const VisionEncoderLayer& layer, const at::Tensor& x,
                       const std::optional<at::Tensor>& key_mask) const;

  SmolVLMVisionConfig config_;
  at::Tensor patch_weight_;  // Conv2d [hidden, channels, patch, patch]
  at::Tensor patch_bias_;
  nn::Embedding position_embedding_;
  std::vector<VisionEncoderLayer> layers_;
  nn::LayerNorm post_layernorm_;
};

// Idefics3Connector: pixel shuffle by scale_factor, then modality_projection.proj (no bias).
class Connector {
 public:
  // Reads `modality_projection.proj.weight` under `weights` (the checkpoint's model.connector).
  static Connector load(const nn::Weights& weights, const SmolVLMConfig& config, const nn::LinearPolicy& policy);

  // [tiles, patches, vision width] -> [tiles, patches / s^2, text width].
  at::Tensor operator()(const at::Tensor& vision_hidden) const;

  bool capturable() const { return !proj_->layer().synchronizes(); }

 private:
  std::int64_t scale_factor_ = 1;
  std::optional<nn::Linear> proj_;
};

// transformers' Idefics3Connector.pixel_shuffle, the same view/permute sequence: [tiles, side * side, width] ->
// [tiles, side * side / s^2, width * s^2]; each output token holds one s x s block of patches.
at::Tensor pixel_shuffle(const at::Tensor& x, std::int64_t scale_factor);

}  // namespace imagetotext::smolvlm
