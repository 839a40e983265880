// generation_config.json as a typed struct. Absent fields take the values transformers' generate() applies
// to fields left unset (GenerationConfig._get_default_generation_params, transformers 5.17).
#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>
#include <vector>

namespace imagetotext {

// transformers' early_stopping: false (the default) stops a beam search when no better finished
// hypothesis is possible by a heuristic, true as soon as num_beams hypotheses are finished, "never" only
// when no better one is possible at all.
enum class EarlyStopping { heuristic, when_enough_finished, never };

struct GenerationConfig {
  std::optional<std::int64_t> bos_token_id;
  std::vector<std::int64_t> eos_token_ids;  // "eos_token_id": an int or a list
  std::optional<std::int64_t> pad_token_id;
  std::optional<std::int64_t> decoder_start_token_id;
  std::optional<std::int64_t> forced_bos_token_id;
  std::optional<std::int64_t> forced_eos_token_id;
  std::int64_t max_length = 20;
  std::optional<std::int64_t> max_new_tokens;
  std::int64_t num_beams = 1;
  std::int64_t no_repeat_ngram_size = 0;
  EarlyStopping early_stopping = EarlyStopping::heuristic;
  double length_penalty = 1.0;
  bool do_sample = false;
};

// Reads generation_config.json; an absent file gives the defaults. Throws CheckpointError naming the file
// and the field for invalid JSON or a field of the wrong type.
GenerationConfig load_generation_config(const std::filesystem::path& generation_config_json);

}  // namespace imagetotext
