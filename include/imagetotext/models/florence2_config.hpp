// Florence-2 config.json as typed structs, in both layouts a user's cache may hold:
//   native   (florence-community/Florence-2-*, transformers' Florence2Config: vision "embed_dim", text "bart")
//   original (microsoft/Florence-2-*, remote code: vision "dim_embed", text "florence2_language")
// Absent fields take the defaults of the class that reads that layout (transformers 5.17 Florence2VisionConfig
// and BartConfig; the remote code's Florence2VisionConfig and Florence2LanguageConfig), so a file is read
// exactly as Python reads it.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include "imagetotext/text/generation_config.hpp"

namespace imagetotext {

enum class Florence2Layout { native, original };

struct Florence2VisionConfig {  // DaViT + the image projector
  std::int64_t in_channels = 3;
  std::vector<std::int64_t> depths{1, 1, 9, 1};
  std::vector<std::int64_t> patch_size{7, 3, 3, 3};
  std::vector<std::int64_t> patch_stride{4, 2, 2, 2};
  std::vector<std::int64_t> patch_padding{3, 1, 1, 1};
  std::vector<bool> patch_prenorm{false, true, true, true};
  std::vector<std::int64_t> embed_dim{128, 256, 512, 1024};  // original: "dim_embed", default 256..2048
  std::vector<std::int64_t> num_heads{4, 8, 16, 32};         // original default 8..64
  std::vector<std::int64_t> num_groups{4, 8, 16, 32};        // original default 8..64
  std::int64_t window_size = 12;
  double mlp_ratio = 4.0;
  bool qkv_bias = true;
  std::string activation_function = "gelu";
  std::int64_t projection_dim = 1024;
  std::int64_t max_temporal_embeddings = 100;  // original: visual_temporal_embedding.max_temporal_embeddings
  std::int64_t max_position_embeddings = 50;   // original: image_pos_embed.max_pos_embeddings

  std::int64_t num_stages() const { return static_cast<std::int64_t>(embed_dim.size()); }
};

struct Florence2TextConfig {  // BART (native BartConfig; original Florence2LanguageConfig)
  std::int64_t vocab_size = 50265;  // original default 51289
  std::int64_t d_model = 1024;
  std::int64_t encoder_layers = 12;
  std::int64_t decoder_layers = 12;
  std::int64_t encoder_attention_heads = 16;
  std::int64_t decoder_attention_heads = 16;
  std::int64_t encoder_ffn_dim = 4096;
  std::int64_t decoder_ffn_dim = 4096;
  std::int64_t max_position_embeddings = 1024;
  std::string activation_function = "gelu";
  bool scale_embedding = false;
  std::int64_t pad_token_id = 1;
  std::int64_t bos_token_id = 0;
  std::int64_t eos_token_id = 2;
  std::int64_t decoder_start_token_id = 2;
};

struct Florence2Config {
  Florence2Layout layout = Florence2Layout::native;
  Florence2VisionConfig vision;
  Florence2TextConfig text;
  std::int64_t image_token_id = 51289;  // native only: the <image> placeholders in input_ids
  // Generation fields the file carries: the original layout keeps them in text_config (num_beams 3,
  // no_repeat_ngram_size 3, forced BOS/EOS, early_stopping), the native one in generation_config.json.
  GenerationConfig generation;

  // Image tokens the projector emits: one pooled token + the final feature map (768 px: 1 + 24 * 24).
  std::int64_t image_tokens(std::int64_t image_size) const;
};

// Reads a Florence-2 config.json of either layout (decided by vision_config: "dim_embed" or a model_type of
// "davit" means original). Throws CheckpointError naming the file and the field for a missing file, invalid
// JSON, a field of the wrong type, another model_type, per-stage lists of different lengths, a width the heads
// or groups do not divide, or a projection_dim different from the text model's d_model.
Florence2Config load_florence2_config(const std::filesystem::path& config_json);

}  // namespace imagetotext
