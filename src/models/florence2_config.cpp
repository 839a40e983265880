#include "imagetotext/models/florence2_config.hpp"

#include "../io/json_file.hpp"
#include "config_reader.hpp"

namespace imagetotext {

namespace {

void read_vision(const detail::ConfigReader& vision, Florence2Layout layout, Florence2VisionConfig& v) {
  if (layout == Florence2Layout::original) {
    // The remote code's Florence2VisionConfig defaults are Florence-2-large's.
    v.embed_dim = {256, 512, 1024, 2048};
    v.num_heads = {8, 16, 32, 64};
    v.num_groups = {8, 16, 32, 64};
    v.embed_dim = vision.get("dim_embed", v.embed_dim);
    v.max_temporal_embeddings =
        vision.child("visual_temporal_embedding").get("max_temporal_embeddings", v.max_temporal_embeddings);
    v.max_position_embeddings = vision.child("image_pos_embed").get("max_pos_embeddings", v.max_position_embeddings);
    for (const char* field : {"visual_temporal_embedding", "image_pos_embed"}) {
      const std::string wanted = field[0] == 'v' ? "COSINE" : "learned_abs_2d";
      const std::string type = vision.child(field).get<std::string>("type", wanted);
      if (type != wanted) vision.child(field).fail("type", "is '" + type + "'; Florence-2 uses '" + wanted + "'");
    }
    const auto sources = vision.get<std::vector<std::string>>(
        "image_feature_source", {"spatial_avg_pool", "temporal_avg_pool"});
    if (sources != std::vector<std::string>{"spatial_avg_pool", "temporal_avg_pool"}) {
      vision.fail("image_feature_source", "must be [\"spatial_avg_pool\", \"temporal_avg_pool\"] (Florence-2's)");
    }
  } else {
    v.in_channels = vision.get("in_channels", v.in_channels);
    v.embed_dim = vision.get("embed_dim", v.embed_dim);
    v.mlp_ratio = vision.get("mlp_ratio", v.mlp_ratio);
    v.qkv_bias = vision.get("qkv_bias", v.qkv_bias);
    v.activation_function = vision.get("activation_function", v.activation_function);
    v.max_temporal_embeddings = vision.get("max_temporal_embeddings", v.max_temporal_embeddings);
    v.max_position_embeddings = vision.get("max_position_embeddings", v.max_position_embeddings);
  }
  v.depths = vision.get("depths", v.depths);
  v.patch_size = vision.get("patch_size", v.patch_size);
  v.patch_stride = vision.get("patch_stride", v.patch_stride);
  v.patch_padding = vision.get("patch_padding", v.patch_padding);
  v.patch_prenorm = vision.get("patch_prenorm", v.patch_prenorm);
  v.num_heads = vision.get("num_heads", v.num_heads);
  v.num_groups = vision.get("num_groups", v.num_groups);
  v.window_size = vision.get("window_size", v.window_size);
  v.projection_dim = vision.get("projection_dim", v.projection_dim);

  const std::size_t stages = v.embed_dim.size();
  const char* const width = layout == Florence2Layout::original ? "dim_embed" : "embed_dim";
  if (stages == 0) vision.fail(width, "must list at least one stage");
  const auto same_length = [&](const char* field, std::size_t size) {
    if (size != stages) {
      vision.fail(field, "has " + std::to_string(size) + " entries where " + width + " has " + std::to_string(stages));
    }
  };
  same_length("depths", v.depths.size());
  same_length("patch_size", v.patch_size.size());
  same_length("patch_stride", v.patch_stride.size());
  same_length("patch_padding", v.patch_padding.size());
  same_length("patch_prenorm", v.patch_prenorm.size());
  same_length("num_heads", v.num_heads.size());
  same_length("num_groups", v.num_groups.size());
  for (std::size_t s = 0; s < stages; ++s) {
    if (v.embed_dim[s] <= 0 || v.num_heads[s] <= 0 || v.embed_dim[s] % v.num_heads[s] != 0) {
      vision.fail("num_heads", "must divide " + std::string(width) + " at every stage");
    }
    if (v.num_groups[s] <= 0 || v.embed_dim[s] % v.num_groups[s] != 0) {
      vision.fail("num_groups", "must divide " + std::string(width) + " at every stage");
    }
  }
  if (v.window_size <= 0) vision.fail("window_size", "must be positive");
  if (v.activation_function != "gelu") {
    vision.fail("activation_function", "is '" + v.activation_function + "'; only 'gelu' is implemented");
  }
}

void read_text(const detail::ConfigReader& text, Florence2TextConfig& t) {
  t.vocab_size = text.get("vocab_size", t.vocab_size);
  t.d_model = text.get("d_model", t.d_model);
  t.encoder_layers = text.get("encoder_layers", t.encoder_layers);
  t.decoder_layers = text.get("decoder_layers", t.decoder_layers);
  t.encoder_attention_heads = text.get("encoder_attention_heads", t.encoder_attention_heads);
  t.decoder_attention_heads = text.get("decoder_attention_heads", t.decoder_attention_heads);
  t.encoder_ffn_dim = text.get("encoder_ffn_dim", t.encoder_ffn_dim);
  t.decoder_ffn_dim = text.get("decoder_ffn_dim", t.decoder_ffn_dim);
  t.max_position_embeddings = text.get("max_position_embeddings", t.max_position_embeddings);
  t.activation_function = text.get("activation_function", t.activation_function);
  t.scale_embedding = text.get("scale_embedding", t.scale_embedding);
  t.pad_token_id = text.get("pad_token_id", t.pad_token_id);
  t.bos_token_id = text.get("bos_token_id", t.bos_token_id);
  t.eos_token_id = text.get("eos_token_id", t.eos_token_id);
  t.decoder_start_token_id = text.get("decoder_start_token_id", t.decoder_start_token_id);
  for (const auto& [heads, name] : {std::pair{t.encoder_attention_heads, "encoder_attention_heads"},
                                    std::pair{t.decoder_attention_heads, "decoder_attention_heads"}}) {
    if (heads <= 0 || t.d_model % heads != 0) text.fail(name, "must divide d_model");
  }
  if (t.activation_function != "gelu") {
    text.fail("activation_function", "is '" + t.activation_function + "'; only 'gelu' is implemented");
  }
}

// The generation fields a PretrainedConfig carries (the original layout's text_config holds Florence-2's).
GenerationConfig read_generation(const detail::ConfigReader& text, const Florence2TextConfig& t) {
  GenerationConfig g;
  g.bos_token_id = t.bos_token_id;
  g.eos_token_ids = {t.eos_token_id};
  g.pad_token_id = t.pad_token_id;
  g.decoder_start_token_id = t.decoder_start_token_id;
  g.forced_bos_token_id = text.optional<std::int64_t>("forced_bos_token_id");
  g.forced_eos_token_id = text.get<std::int64_t>("forced_eos_token_id", 2);  // both classes default to 2
  g.num_beams = text.get("num_beams", g.num_beams);
  g.no_repeat_ngram_size = text.get("no_repeat_ngram_size", g.no_repeat_ngram_size);
  g.length_penalty = text.get("length_penalty", g.length_penalty);
  if (text.get("early_stopping", false)) g.early_stopping = EarlyStopping::when_enough_finished;
  return g;
}

}  // namespace

std::int64_t Florence2Config::image_tokens(std::int64_t image_size) const {
  std::int64_t side = image_size;
  for (std::int64_t s = 0; s < vision.num_stages(); ++s) {
    side = (side + 2 * vision.patch_padding[s] - vision.patch_size[s]) / vision.patch_stride[s] + 1;
  }
  return 1 + side * side;
}

Florence2Config load_florence2_config(const std::filesystem::path& config_json) {
  const nlohmann::json json = io::detail::read_json_file(config_json, "model config");
  const detail::ConfigReader top(json, config_json);
  const std::string model_type = top.require<std::string>("model_type");
  if (model_type != "florence2") top.fail("model_type", "is '" + model_type + "', not a Florence-2 model ('florence2')");

  Florence2Config config;
  const detail::ConfigReader vision = top.child("vision_config");
  const detail::ConfigReader text = top.child("text_config");
  const std::string vision_type = vision.get<std::string>("model_type", "");
  config.layout = vision.has("dim_embed") || vision_type == "davit" ? Florence2Layout::original : Florence2Layout::native;

  read_vision(vision, config.layout, config.vision);
  if (config.layout == Florence2Layout::original) {
    config.text.vocab_size = 51289;  // Florence2LanguageConfig's default
    // The remote code projects to vision_config.projection_dim; the top-level field is its twin.
    if (!vision.has("projection_dim")) config.vision.projection_dim = top.get("projection_dim", config.vision.projection_dim);
  } else {
    const std::string text_type = text.get<std::string>("model_type", "bart");
    if (text_type != "bart") text.fail("model_type", "is '" + text_type + "'; Florence-2's text model is 'bart'");
    config.image_token_id = top.get("image_token_id", config.image_token_id);
  }
  read_text(text, config.text);
  config.generation = read_generation(text, config.text);
  if (config.vision.projection_dim != config.text.d_model) {
    vision.fail("projection_dim", "is " + std::to_string(config.vision.projection_dim) +
                                      " but the text model's d_model is " + std::to_string(config.text.d_model));
  }
  return config;
}

}  // namespace imagetotext
