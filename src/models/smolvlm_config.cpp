#include "imagetotext/models/smolvlm_config.hpp"

#include <algorithm>

#include "../io/json_file.hpp"
#include "config_reader.hpp"

namespace imagetotext {

SmolVLMConfig load_smolvlm_config(const std::filesystem::path& config_json) {
  const nlohmann::json json = io::detail::read_json_file(config_json, "model config");
  const detail::ConfigReader top(json, config_json);
  SmolVLMConfig config;
  config.model_type = top.require<std::string>("model_type");
  if (config.model_type != "idefics3" && config.model_type != "smolvlm") {
    top.fail("model_type", "is '" + config.model_type + "', not a SmolVLM model ('idefics3' or 'smolvlm')");
  }
  config.scale_factor = top.get("scale_factor", config.scale_factor);
  config.image_token_id = top.get("image_token_id", config.image_token_id);
  config.tie_word_embeddings = top.get("tie_word_embeddings", config.tie_word_embeddings);

  const detail::ConfigReader vision = top.child("vision_config");
  SmolVLMVisionConfig& v = config.vision;
  v.hidden_size = vision.get("hidden_size", v.hidden_size);
  v.intermediate_size = vision.get("intermediate_size", v.intermediate_size);
  v.num_hidden_layers = vision.get("num_hidden_layers", v.num_hidden_layers);
  v.num_attention_heads = vision.get("num_attention_heads", v.num_attention_heads);
  v.num_channels = vision.get("num_channels", v.num_channels);
  v.image_size = vision.get("image_size", v.image_size);
  v.patch_size = vision.get("patch_size", v.patch_size);
  v.hidden_act = vision.get("hidden_act", v.hidden_act);
  v.layer_norm_eps = vision.get("layer_norm_eps", v.layer_norm_eps);

  const detail::ConfigReader text = top.child("text_config");
  SmolVLMTextConfig& t = config.text;
  if (!top.has("text_config")) {
    // Idefics3Config builds LlamaConfig(rms_norm_eps=1e-5, pad_token_id=<its own pad_token_id>).
    t.rms_norm_eps = 1e-5;
    t.pad_token_id = top.get<std::int64_t>("pad_token_id", 128002);
  } else {
    const std::string text_type = text.get<std::string>("model_type", "llama");
    if (text_type != "llama") text.fail("model_type", "is '" + text_type + "'; SmolVLM's text model is 'llama'");
    t.pad_token_id = text.optional<std::int64_t>("pad_token_id");
  }
  t.vocab_size = text.get("vocab_size", t.vocab_size);
  t.hidden_size = text.get("hidden_size", t.hidden_size);
  t.intermediate_size = text.get("intermediate_size", t.intermediate_size);
  t.num_hidden_layers = text.get("num_hidden_layers", t.num_hidden_layers);
  t.num_attention_heads = text.get("num_attention_heads", t.num_attention_heads);
  t.num_key_value_heads = text.get("num_key_value_heads", t.num_attention_heads);
  // The one check LlamaConfig makes when it is built; shape checks that need the whole model (grouped
  // heads, the pixel-shuffle grid) belong to the model, as in transformers.
  if (t.num_attention_heads <= 0 || t.hidden_size % t.num_attention_heads != 0) {
    text.fail("hidden_size", "must be a multiple of num_attention_heads");
  }
  t.head_dim = text.get("head_dim", t.hidden_size / t.num_attention_heads);
  t.max_position_embeddings = text.get("max_position_embeddings", t.max_position_embeddings);
  t.rms_norm_eps = text.get("rms_norm_eps", t.rms_norm_eps);
  // transformers 5 keeps rope_theta inside rope_parameters; older files have it at the top of text_config.
  t.rope_theta = text.get("rope_theta", text.child("rope_parameters").get("rope_theta", t.rope_theta));
  t.hidden_act = text.get("hidden_act", t.hidden_act);
  t.attention_bias = text.get("attention_bias", t.attention_bias);
  t.mlp_bias = text.get("mlp_bias", t.mlp_bias);
  return config;
}

namespace {
std::array<double, 3> per_channel(const detail::ConfigReader& reader, const nlohmann::json& object, const char* key,
                                  std::array<double, 3> fallback) {
  if (!reader.has(key)) return fallback;
  const nlohmann::json& value = object.at(key);
  if (value.is_number()) return {value.get<double>(), value.get<double>(), value.get<double>()};
  if (!value.is_array() || value.size() != 3 ||
      !std::all_of(value.begin(), value.end(), [](const auto& v) { return v.is_number(); })) {
    reader.fail(key, "must be a number or a list of 3 numbers, got " + value.dump());
  }
  return {value[0].get<double>(), value[1].get<double>(), value[2].get<double>()};
}

void read_image_processor(const nlohmann::json& object, const detail::ConfigReader& reader,
                          SmolVLMProcessorConfig& config) {
  config.do_resize = reader.get("do_resize", config.do_resize);
  config.longest_edge = reader.child("size").get("longest_edge", config.longest_edge);
  config.max_image_size = reader.child("max_image_size").get("longest_edge", config.max_image_size);
  config.do_image_splitting = reader.get("do_image_splitting", config.do_image_splitting);
  config.resample = reader.get("resample", config.resample);
  if (config.resample != 1) reader.fail("resample", "is " + std::to_string(config.resample) + "; only LANCZOS (1) is implemented");
  config.do_rescale = reader.get("do_rescale", config.do_rescale);
  config.rescale_factor = reader.get("rescale_factor", config.rescale_factor);
  config.do_normalize = reader.get("do_normalize", config.do_normalize);
  config.image_mean = per_channel(reader, object, "image_mean", config.image_mean);
  config.image_std = per_channel(reader, object, "image_std", config.image_std);
  if (config.longest_edge <= 0) reader.fail("size.longest_edge", "must be positive");
  if (config.max_image_size <= 0) reader.fail("max_image_size.longest_edge", "must be positive");
}
}  // namespace

SmolVLMProcessorConfig load_smolvlm_processor_config(const std::optional<std::filesystem::path>& processor_config_json,
                                                     const std::optional<std::filesystem::path>& preprocessor_config_json) {
  SmolVLMProcessorConfig config;
  if (preprocessor_config_json) {
    const nlohmann::json json = io::detail::read_json_file(*preprocessor_config_json, "image processor config");
    read_image_processor(json, detail::ConfigReader(json, *preprocessor_config_json), config);
  }
  if (processor_config_json) {
    const nlohmann::json json = io::detail::read_json_file(*processor_config_json, "processor config");
    const detail::ConfigReader top(json, *processor_config_json);
    config.image_seq_len = top.get("image_seq_len", config.image_seq_len);
    if (config.image_seq_len <= 0) top.fail("image_seq_len", "must be positive");
    if (top.has("image_processor")) read_image_processor(json.at("image_processor"), top.child("image_processor"), config);
  }
  return config;
}

}  // namespace imagetotext
