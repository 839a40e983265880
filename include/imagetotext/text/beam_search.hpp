// Decoding as transformers' generate() runs it (transformers 5.17, generation/utils.py), for any model that
// can produce next-token logits for a set of running sequences: beam search (num_beams > 1) and greedy
// search (num_beams == 1), with the logits processors these models' generation configs turn on —
// no-repeat n-grams, forced BOS at the first step, forced EOS at the last — and the stopping rules
// (EOS, max_length, early_stopping, length_penalty). Batch size 1: one request, `num_beams` sequences.
//
// The search keeps its bookkeeping on the CPU in float32 (a few beams × the vocabulary per step); the
// model computes logits wherever it lives. The beam search is a tensor-for-tensor port of transformers'
// vectorized one, so ties break the same way (torch.topk on the same scores).
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <functional>
#include <optional>
#include <vector>

#include "imagetotext/text/generation_config.hpp"

namespace imagetotext::text {

struct SearchSettings {
  std::int64_t num_beams = 1;
  std::int64_t max_length = 20;  // decoder prompt + new tokens, as transformers' max_length
  std::int64_t no_repeat_ngram_size = 0;
  std::optional<std::int64_t> forced_bos_token_id;
  std::optional<std::int64_t> forced_eos_token_id;
  std::vector<std::int64_t> eos_token_ids;
  std::optional<std::int64_t> pad_token_id;
  double length_penalty = 1.0;
  EarlyStopping early_stopping = EarlyStopping::heuristic;

  // The settings generate() derives from a generation config for a decoder prompt of `prompt_length`
  // tokens: max_new_tokens (the argument, else the config's) wins over max_length, as in transformers.
  static SearchSettings from(const GenerationConfig& config, std::int64_t prompt_length,
                             std::optional<std::int64_t> max_new_tokens = std::nullopt);
};

// What the search needs from a model. `next_logits(tokens)` runs the decoder on the tokens the running
// sequences appended since the last call ([n, new] int64 on the CPU; the whole prompt at the first call)
// and returns the logits of each sequence's last position [n, vocab]. `reorder(order)` makes sequence i
// continue sequence order[i] (int64 [n] on the CPU): the model reorders its caches. n is num_beams.
struct DecoderSteps {
  std::function<at::Tensor(const at::Tensor& tokens)> next_logits;
  std::function<void(const at::Tensor& order)> reorder;
};

struct SearchResult {
  std::vector<std::int64_t> sequence;  // the decoder prompt followed by the generated tokens
  double score = 0.0;                  // beam search: sum of log-probabilities / length^length_penalty
};

// Runs the search generate() would run for `settings` (beam search when num_beams > 1, else greedy).
// Throws InvalidArgumentError for an empty prompt, num_beams < 1 or a prompt already at max_length.
SearchResult generate(const std::vector<std::int64_t>& prompt, const SearchSettings& settings,
                      const DecoderSteps& steps);

// The logits processors, applied in transformers' order to scores [n, vocab] (float32, CPU) for running
// sequences `sequences` [n, cur_len] (int64, CPU). Exposed for tests.
void apply_logits_processors(const at::Tensor& sequences, at::Tensor& scores, const SearchSettings& settings);

}  // namespace imagetotext::text
