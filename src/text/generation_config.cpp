#include "imagetotext/text/generation_config.hpp"

#include "../io/json_file.hpp"
#include "../models/config_reader.hpp"

namespace imagetotext {

GenerationConfig load_generation_config(const std::filesystem::path& generation_config_json) {
  GenerationConfig config;
  std::error_code ec;
  if (!std::filesystem::exists(generation_config_json, ec)) return config;  // transformers' defaults
  const nlohmann::json json = io::detail::read_json_file(generation_config_json, "generation config");
  const detail::ConfigReader file(json, generation_config_json);
  config.bos_token_id = file.optional<std::int64_t>("bos_token_id");
  config.eos_token_ids = file.get<std::vector<std::int64_t>>("eos_token_id", {});
  config.pad_token_id = file.optional<std::int64_t>("pad_token_id");
  config.decoder_start_token_id = file.optional<std::int64_t>("decoder_start_token_id");
  config.forced_bos_token_id = file.optional<std::int64_t>("forced_bos_token_id");
  config.forced_eos_token_id = file.optional<std::int64_t>("forced_eos_token_id");
  config.max_length = file.get("max_length", config.max_length);
  config.max_new_tokens = file.optional<std::int64_t>("max_new_tokens");
  config.num_beams = file.get("num_beams", config.num_beams);
  config.no_repeat_ngram_size = file.get("no_repeat_ngram_size", config.no_repeat_ngram_size);
  if (file.has("early_stopping") && json.at("early_stopping").is_string()) {
    if (file.require<std::string>("early_stopping") != "never") {
      file.fail("early_stopping", "must be true, false or \"never\"");
    }
    config.early_stopping = EarlyStopping::never;
  } else if (file.get("early_stopping", false)) {
    config.early_stopping = EarlyStopping::when_enough_finished;
  }
  config.length_penalty = file.get("length_penalty", config.length_penalty);
  config.do_sample = file.get("do_sample", config.do_sample);
  return config;
}

}  // namespace imagetotext
