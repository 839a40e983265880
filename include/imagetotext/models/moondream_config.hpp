// moondream2 (revision 2025-01-09) configuration as typed structs. The model's code (vikhyat/moondream
// moondream/torch/config.py @8ac77eb) keeps its configuration in dataclasses whose defaults are the
// released model; the hub's config.json only says model_type "moondream1" (HfConfig replaces any "config"
// it carries with {}), so for that file the defaults are the configuration. The repository's own
// config_md2.json form ({"text": {...}, "vision": {...}, "region": {...}, "tokenizer": {...}}, read by
// MoondreamConfig.from_dict) overrides them field by field. See shared/reference/moondream2.md, 1.3.
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <optional>
#include <string>
#include <vector>

namespace imagetotext {

struct MoondreamTextConfig {  // Phi-1.5 blocks
  std::int64_t dim = 2048;
  std::int64_t n_layers = 24;
  std::int64_t vocab_size = 51200;
  std::int64_t max_context = 2048;
  std::int64_t n_heads = 32;
  std::int64_t prefix_attn = 730;  // BOS + 729 image tokens attend bidirectionally
};

struct MoondreamVisionConfig {  // SigLIP-so400m-shaped ViT and the projection MLP
  std::int64_t enc_dim = 1152;
  std::int64_t enc_patch_size = 14;
  std::int64_t enc_n_layers = 27;
  std::int64_t enc_ff_dim = 4304;
  std::int64_t enc_n_heads = 16;
  std::int64_t proj_out_dim = 2048;
  std::int64_t crop_size = 378;
  std::int64_t in_channels = 3;
  std::int64_t max_crops = 12;
  std::int64_t overlap_margin = 4;
  std::int64_t proj_inner_dim = 8192;
};

struct MoondreamRegionConfig {  // detect/point heads; not used for captions
  std::int64_t dim = 2048;
  std::int64_t coord_feat_dim = 256;
  std::int64_t coord_out_dim = 1024;
  std::int64_t size_feat_dim = 512;
  std::int64_t size_out_dim = 2048;
  std::int64_t inner_dim = 8192;
};

struct MoondreamTokenizerConfig {
  std::int64_t bos_id = 50256;
  std::int64_t eos_id = 50256;
  // Prompt token ids per task and part, e.g. templates["caption"]["normal"] = "\n\nCaption:". A task mapped
  // to null in the file is absent here (the model has no such prompt).
  std::map<std::string, std::map<std::string, std::vector<std::int64_t>>> templates = {
      {"caption", {{"short", {198, 198, 16438, 8305, 25}}, {"normal", {198, 198, 24334, 1159, 25}}}},
      {"query", {{"prefix", {198, 198, 24361, 25}}, {"suffix", {198, 198, 33706, 25}}}},
      {"detect", {{"prefix", {198, 198, 47504, 25}}, {"suffix", {628}}}},
      {"point", {{"prefix", {198, 198, 12727, 25}}, {"suffix", {628}}}},
  };
};

struct MoondreamConfig {
  MoondreamTextConfig text;
  MoondreamVisionConfig vision;
  MoondreamRegionConfig region;
  MoondreamTokenizerConfig tokenizer;
};

// Reads the hub's config.json (model_type "moondream1": the defaults) or a config_md2.json-style file
// (fields override the defaults). Throws CheckpointError naming the file and the dotted field for a
// missing file, invalid JSON, another model_type, a field the dataclasses do not have (from_dict would
// raise TypeError), a value of the wrong type, or sizes the heads do not divide.
MoondreamConfig load_moondream_config(const std::filesystem::path& config_json);

}  // namespace imagetotext
