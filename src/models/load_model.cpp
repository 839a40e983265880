// load_model: a model for any checkpoint, its family read from config.json's model_type.
#include <fmt/format.h>

#include "../io/json_file.hpp"
#include "config_reader.hpp"
#include "imagetotext/core/error.hpp"
#include "imagetotext/image_to_text.hpp"
#include "imagetotext/models/checkpoint_tools.hpp"

namespace imagetotext {

ModelFamily family_of_model_type(std::string_view model_type, std::string_view source) {
  if (model_type == "idefics3" || model_type == "smolvlm") return ModelFamily::smolvlm;
  if (model_type == "florence2") return ModelFamily::florence2;
  if (model_type == "moondream1") return ModelFamily::moondream2;
  throw CheckpointError(fmt::format("{}: model_type '{}' is not a supported model (imagetotext runs idefics3 and "
                                    "smolvlm (SmolVLM), florence2 (Florence-2) and moondream1 (moondream2))",
                                    source, model_type));
}

std::unique_ptr<Captioner> load_model(std::string_view checkpoint, ModelOptions options, std::string_view revision) {
  if (checkpoint.empty()) throw InvalidArgumentError("load_model: the checkpoint (a directory or hub id) is empty");
  const std::filesystem::path config_path = io::hub_file(checkpoint, "config.json", revision, options.hub);
  const nlohmann::json config = io::detail::read_json_file(config_path, "model config");
  const detail::ConfigReader reader(config, config_path);
  const auto model_type = reader.require<std::string>("model_type");
  const ModelFamily family = family_of_model_type(model_type, config_path.string());

  // A pre-quantized checkpoint (`imagetotext quantize`, transformers + bitsandbytes) says so in config.json: its
  // format and skipped modules become the defaults, so the model reports them and dense layers stay as stored.
  if (!options.quantization) {
    if (const auto declared = declared_quantization(config_path)) {
      options.quantization = declared->format;
      if (!options.keep_dense) options.keep_dense = declared->keep_dense;
    }
  }
  options.checkpoint = std::string(checkpoint);
  const ModelSpec spec{checkpoint, family, checkpoint, revision, options.quantization.value_or(Quantization::none)};
  return make_captioner(spec, options);  // copies the spec's strings
}

}  // namespace imagetotext
