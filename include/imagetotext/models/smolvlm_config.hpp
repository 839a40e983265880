// SmolVLM (Idefics3) config.json as typed structs, with transformers' defaults for absent fields:
// Idefics3Config, Idefics3VisionConfig and LlamaConfig (transformers 5.17). The defaults are the Idefics3-8B
// ones (scale_factor 2, vision 1152 wide...), so a SmolVLM checkpoint must state its own values; they are
// kept here so a file is read exactly as transformers reads it.
#pragma once

#include <array>
#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>

namespace imagetotext {

struct SmolVLMVisionConfig {  // SigLIP
  std::int64_t hidden_size = 1152;
  std::int64_t intermediate_size = 3072;
  std::int64_t num_hidden_layers = 12;
  std::int64_t num_attention_heads = 16;
  std::int64_t num_channels = 3;
  std::int64_t image_size = 224;
  std::int64_t patch_size = 32;
  std::string hidden_act = "gelu_pytorch_tanh";
  double layer_norm_eps = 1e-6;
};

struct SmolVLMTextConfig {  // Llama
  std::int64_t vocab_size = 32000;
  std::int64_t hidden_size = 4096;
  std::int64_t intermediate_size = 11008;
  std::int64_t num_hidden_layers = 32;
  std::int64_t num_attention_heads = 32;
  std::int64_t num_key_value_heads = 32;  // absent: num_attention_heads
  std::int64_t head_dim = 128;            // absent: hidden_size / num_attention_heads
  std::int64_t max_position_embeddings = 2048;
  double rms_norm_eps = 1e-6;             // 1e-5 when the whole text_config is absent (Idefics3Config)
  double rope_theta = 10000.0;            // "rope_theta", or "rope_parameters": {"rope_theta": ...}
  std::string hidden_act = "silu";
  bool attention_bias = false;
  bool mlp_bias = false;
  std::optional<std::int64_t> pad_token_id;
};

struct SmolVLMConfig {
  std::string model_type;  // "idefics3" (SmolVLM v1) or "smolvlm" (v2)
  SmolVLMVisionConfig vision;
  SmolVLMTextConfig text;
  std::int64_t scale_factor = 2;          // pixel-shuffle factor of the connector
  std::int64_t image_token_id = 128257;
  bool tie_word_embeddings = false;

  // Tokens one 512-pixel tile becomes after the pixel shuffle: (image_size / patch_size)^2 / scale_factor^2.
  std::int64_t image_seq_len() const {
    const std::int64_t side = vision.image_size / vision.patch_size;
    return side * side / (scale_factor * scale_factor);
  }
};

// The processor's settings: Idefics3ImageProcessor's fields (preprocessor_config.json, or the
// "image_processor" object of a transformers 5 processor_config.json) and the processor's image_seq_len.
// Defaults are Idefics3ImageProcessorPil's and Idefics3Processor's; the SmolVLM checkpoints override them.
struct SmolVLMProcessorConfig {
  bool do_resize = true;
  std::int64_t longest_edge = 4 * 364;    // size.longest_edge: the first resize
  std::int64_t max_image_size = 364;      // max_image_size.longest_edge: the tile side
  bool do_image_splitting = true;
  int resample = 1;                       // PIL's LANCZOS; the only filter implemented
  bool do_rescale = true;
  double rescale_factor = 1.0 / 255.0;
  bool do_normalize = true;
  std::array<double, 3> image_mean{0.5, 0.5, 0.5};
  std::array<double, 3> image_std{0.5, 0.5, 0.5};
  std::int64_t image_seq_len = 169;       // <image> tokens per tile
};

// Reads the processor's files, either of which may be absent (std::nullopt): processor_config.json (its
// image_seq_len, and its "image_processor" object when transformers 5 wrote it) and
// preprocessor_config.json. Throws CheckpointError naming the file and the field for invalid JSON, a field
// of the wrong type, or a resample filter other than LANCZOS.
SmolVLMProcessorConfig load_smolvlm_processor_config(const std::optional<std::filesystem::path>& processor_config_json,
                                                     const std::optional<std::filesystem::path>& preprocessor_config_json);

// Reads a SmolVLM config.json. Throws CheckpointError naming the file and the field for a missing file,
// invalid JSON, a field of the wrong type, another model_type, or a hidden size the heads do not divide.
SmolVLMConfig load_smolvlm_config(const std::filesystem::path& config_json);

}  // namespace imagetotext
