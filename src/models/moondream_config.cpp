#include "imagetotext/models/moondream_config.hpp"

#include <algorithm>
#include <initializer_list>

#include "../io/json_file.hpp"
#include "config_reader.hpp"

namespace imagetotext {
namespace {

// The dataclasses take keyword arguments: a key they do not have makes from_dict raise TypeError.
void check_keys(const nlohmann::json& object, const detail::ConfigReader& reader,
                std::initializer_list<const char*> known) {
  for (const auto& [key, value] : object.items()) {
    if (std::find_if(known.begin(), known.end(), [&](const char* k) { return key == k; }) == known.end()) {
      reader.fail(key, "is not a field of moondream's configuration");
    }
  }
}

const nlohmann::json& section(const nlohmann::json& top, const char* key) {
  static const nlohmann::json empty = nlohmann::json::object();
  return top.contains(key) && !top.at(key).is_null() ? top.at(key) : empty;
}

void read_templates(const nlohmann::json& json, const detail::ConfigReader& reader, MoondreamTokenizerConfig& t) {
  const detail::ConfigReader templates = reader.child("templates");  // checks that it is an object
  t.templates.clear();
  for (const auto& [task, parts] : json.items()) {
    if (parts.is_null()) continue;  // Optional[...]: the model has no prompt for this task
    const detail::ConfigReader task_reader = templates.child(task);
    for (const auto& [part, ids] : parts.items()) {
      t.templates[task][part] = task_reader.require<std::vector<std::int64_t>>(part);
    }
  }
}

}  // namespace

MoondreamConfig load_moondream_config(const std::filesystem::path& config_json) {
  const nlohmann::json json = io::detail::read_json_file(config_json, "model config");
  const detail::ConfigReader top(json, config_json);
  MoondreamConfig config;
  if (top.has("model_type")) {
    // The hub's config.json: HfConfig.__init__ sets self.config = {} after reading the file, so whatever
    // else the file holds, the model runs on the dataclass defaults.
    const std::string model_type = top.require<std::string>("model_type");
    if (model_type != "moondream1") {
      top.fail("model_type", "is '" + model_type + "', not moondream2's 'moondream1'");
    }
    return config;
  }
  check_keys(json, top, {"text", "vision", "region", "tokenizer"});

  const detail::ConfigReader text = top.child("text");
  check_keys(section(json, "text"), text, {"dim", "n_layers", "vocab_size", "max_context", "n_heads", "prefix_attn"});
  MoondreamTextConfig& x = config.text;
  x.dim = text.get("dim", x.dim);
  x.n_layers = text.get("n_layers", x.n_layers);
  x.vocab_size = text.get("vocab_size", x.vocab_size);
  x.max_context = text.get("max_context", x.max_context);
  x.n_heads = text.get("n_heads", x.n_heads);
  x.prefix_attn = text.get("prefix_attn", x.prefix_attn);
  if (x.n_heads <= 0 || x.dim % x.n_heads != 0) text.fail("dim", "must be a multiple of n_heads");

  const detail::ConfigReader vision = top.child("vision");
  check_keys(section(json, "vision"), vision,
             {"enc_dim", "enc_patch_size", "enc_n_layers", "enc_ff_dim", "enc_n_heads", "proj_out_dim", "crop_size",
              "in_channels", "max_crops", "overlap_margin", "proj_inner_dim"});
  MoondreamVisionConfig& v = config.vision;
  v.enc_dim = vision.get("enc_dim", v.enc_dim);
  v.enc_patch_size = vision.get("enc_patch_size", v.enc_patch_size);
  v.enc_n_layers = vision.get("enc_n_layers", v.enc_n_layers);
  v.enc_ff_dim = vision.get("enc_ff_dim", v.enc_ff_dim);
  v.enc_n_heads = vision.get("enc_n_heads", v.enc_n_heads);
  v.proj_out_dim = vision.get("proj_out_dim", v.proj_out_dim);
  v.crop_size = vision.get("crop_size", v.crop_size);
  v.in_channels = vision.get("in_channels", v.in_channels);
  v.max_crops = vision.get("max_crops", v.max_crops);
  v.overlap_margin = vision.get("overlap_margin", v.overlap_margin);
  v.proj_inner_dim = vision.get("proj_inner_dim", v.proj_inner_dim);
  if (v.enc_n_heads <= 0 || v.enc_dim % v.enc_n_heads != 0) vision.fail("enc_dim", "must be a multiple of enc_n_heads");
  if (v.enc_patch_size <= 0 || v.crop_size % v.enc_patch_size != 0) {
    vision.fail("crop_size", "must be a multiple of enc_patch_size");
  }

  const detail::ConfigReader region = top.child("region");
  check_keys(section(json, "region"), region,
             {"dim", "coord_feat_dim", "coord_out_dim", "size_feat_dim", "size_out_dim", "inner_dim"});
  MoondreamRegionConfig& r = config.region;
  r.dim = region.get("dim", r.dim);
  r.coord_feat_dim = region.get("coord_feat_dim", r.coord_feat_dim);
  r.coord_out_dim = region.get("coord_out_dim", r.coord_out_dim);
  r.size_feat_dim = region.get("size_feat_dim", r.size_feat_dim);
  r.size_out_dim = region.get("size_out_dim", r.size_out_dim);
  r.inner_dim = region.get("inner_dim", r.inner_dim);

  const detail::ConfigReader tokenizer = top.child("tokenizer");
  check_keys(section(json, "tokenizer"), tokenizer, {"bos_id", "eos_id", "templates"});
  MoondreamTokenizerConfig& t = config.tokenizer;
  t.bos_id = tokenizer.get("bos_id", t.bos_id);
  t.eos_id = tokenizer.get("eos_id", t.eos_id);
  if (tokenizer.has("templates")) read_templates(section(json, "tokenizer").at("templates"), tokenizer, t);
  return config;
}

}  // namespace imagetotext
