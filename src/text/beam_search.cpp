#include "imagetotext/text/beam_search.hpp"

#include <ATen/ops/all.h>
#include <ATen/ops/any.h>
#include <ATen/ops/argmax.h>
#include <ATen/ops/cat.h>
#include <ATen/ops/full.h>
#include <ATen/ops/index_select.h>
#include <ATen/ops/isin.h>
#include <ATen/ops/log_softmax.h>
#include <ATen/ops/min.h>
#include <ATen/ops/ones.h>
#include <ATen/ops/tensor.h>
#include <ATen/ops/topk.h>
#include <ATen/ops/where.h>
#include <ATen/ops/zeros.h>
#include <fmt/format.h>

#include <cmath>
#include <limits>

#include "imagetotext/core/error.hpp"

namespace imagetotext::text {

namespace {

constexpr float kMinusInf = -std::numeric_limits<float>::infinity();
constexpr double kUnreachable = -1.0e9;  // transformers' stand-in for "never pick this beam"

at::Tensor cpu_long(const std::vector<std::int64_t>& values) {
  return at::tensor(values, at::TensorOptions().dtype(at::kLong));
}

// NoRepeatNGramLogitsProcessor: a token that would complete an n-gram already in the sequence is banned.
void ban_repeated_ngrams(const at::Tensor& sequences, at::Tensor& scores, std::int64_t n) {
  const std::int64_t cur_len = sequences.size(1);
  if (n <= 0 || cur_len + 1 < n) return;
  const at::Tensor rows = sequences.contiguous();
  for (std::int64_t b = 0; b < rows.size(0); ++b) {
    const std::int64_t* tokens = rows[b].data_ptr<std::int64_t>();
    const std::vector<std::int64_t> prefix(tokens + cur_len - n + 1, tokens + cur_len);
    for (std::int64_t start = 0; start + n <= cur_len; ++start) {
      if (std::equal(prefix.begin(), prefix.end(), tokens + start)) scores[b][tokens[start + n - 1]] = kMinusInf;
    }
  }
}

void force_token(at::Tensor& scores, std::int64_t token, const char* what) {
  if (token < 0 || token >= scores.size(1)) {
    throw InvalidArgumentError(fmt::format("{} {} is outside the model's vocabulary of {}", what, token, scores.size(1)));
  }
  scores.fill_(kMinusInf);
  scores.select(1, token).fill_(0.0);
}

at::Tensor hits_stopping_criteria(const at::Tensor& sequences, const SearchSettings& settings) {
  const std::int64_t length = sequences.size(1);
  if (length >= settings.max_length) return at::ones({sequences.size(0)}, at::kBool);
  if (settings.eos_token_ids.empty()) return at::zeros({sequences.size(0)}, at::kBool);
  return at::isin(sequences.select(1, length - 1), cpu_long(settings.eos_token_ids));
}

SearchResult greedy_search(const std::vector<std::int64_t>& prompt, const SearchSettings& settings,
                           const DecoderSteps& steps) {
  std::vector<std::int64_t> sequence = prompt;
  at::Tensor tokens = cpu_long(prompt).unsqueeze(0);
  while (true) {
    at::Tensor scores = steps.next_logits(tokens).to(at::kCPU, at::kFloat).contiguous().clone();
    apply_logits_processors(cpu_long(sequence).unsqueeze(0), scores, settings);
    const std::int64_t next = scores.argmax(-1).item<std::int64_t>();
    sequence.push_back(next);
    if (hits_stopping_criteria(cpu_long(sequence).unsqueeze(0), settings).item<bool>()) break;
    tokens = cpu_long({next}).unsqueeze(0);
  }
  return {std::move(sequence), 0.0};
}

// transformers' GenerationMixin._beam_search for batch size 1 (names follow it).
SearchResult beam_search(const std::vector<std::int64_t>& prompt, const SearchSettings& settings,
                         const DecoderSteps& steps) {
  const std::int64_t num_beams = settings.num_beams;
  const std::int64_t prompt_len = static_cast<std::int64_t>(prompt.size());
  const std::int64_t max_length = settings.max_length;
  const std::int64_t n_eos = static_cast<std::int64_t>(settings.eos_token_ids.size());
  const std::int64_t beams_to_keep = std::max<std::int64_t>(2, 1 + n_eos) * num_beams;
  const bool stop_when_enough_finished = settings.early_stopping == EarlyStopping::when_enough_finished;
  const auto f32 = at::TensorOptions().dtype(at::kFloat);
  const auto i64 = at::TensorOptions().dtype(at::kLong);

  // `pad_token_id or eos_token_id[0]`: a pad id of 0 counts as absent there.
  const std::int64_t fill = settings.pad_token_id.value_or(0) != 0 ? *settings.pad_token_id
                            : n_eos > 0                              ? settings.eos_token_ids[0]
                                                                     : -1;
  at::Tensor running_sequences = at::full({num_beams, max_length}, fill, i64);
  running_sequences.narrow(1, 0, prompt_len).copy_(cpu_long(prompt).unsqueeze(0).expand({num_beams, prompt_len}));
  at::Tensor sequences = running_sequences.clone();
  at::Tensor running_beam_scores = at::zeros({num_beams}, f32);
  running_beam_scores.narrow(0, 1, num_beams - 1).fill_(kUnreachable);
  at::Tensor beam_scores = at::full({num_beams}, kUnreachable, f32);
  at::Tensor is_sent_finished = at::zeros({num_beams}, at::kBool);
  bool heuristic_unsatisfied = true;
  at::Tensor running_beam_indices = at::full({num_beams, max_length - prompt_len}, -1, i64);
  at::Tensor beam_indices = running_beam_indices.clone();
  at::Tensor top_num_beam_mask = at::zeros({beams_to_keep}, at::kBool);
  top_num_beam_mask.narrow(0, 0, num_beams).fill_(true);

  std::int64_t cur_len = prompt_len;
  at::Tensor step_tokens = running_sequences.narrow(1, 0, prompt_len).clone();
  while (true) {
    const at::Tensor logits = steps.next_logits(step_tokens).to(at::kCPU, at::kFloat);
    const std::int64_t vocab = logits.size(1);
    at::Tensor log_probs = at::log_softmax(logits, -1).contiguous();
    apply_logits_processors(running_sequences.narrow(1, 0, cur_len), log_probs, settings);
    log_probs = (log_probs + running_beam_scores.unsqueeze(1)).reshape({num_beams * vocab});

    // _get_top_k_continuations
    auto [topk_log_probs, topk_indices] = at::topk(log_probs, beams_to_keep);
    const at::Tensor topk_current_beam = topk_indices.div(vocab, "floor");
    const at::Tensor topk_ids = topk_indices.remainder(vocab);
    at::Tensor topk_running_sequences = running_sequences.index_select(0, topk_current_beam);
    at::Tensor topk_running_beam_indices = running_beam_indices.index_select(0, topk_current_beam);
    topk_running_sequences.select(1, cur_len).copy_(topk_ids);
    topk_running_beam_indices.select(1, cur_len - prompt_len).copy_(topk_current_beam);

    const at::Tensor hits = hits_stopping_criteria(topk_running_sequences.narrow(1, 0, cur_len + 1), settings);

    // _get_running_beams_for_next_iteration
    const at::Tensor topk_running_log_probs = topk_log_probs + hits.to(at::kFloat) * kUnreachable;
    const at::Tensor next_topk = std::get<1>(at::topk(topk_running_log_probs, num_beams));
    running_sequences = topk_running_sequences.index_select(0, next_topk);
    running_beam_scores = topk_running_log_probs.index_select(0, next_topk);
    running_beam_indices = topk_running_beam_indices.index_select(0, next_topk);

    // _update_finished_beams
    const at::Tensor just_finished = hits.logical_and(top_num_beam_mask);
    at::Tensor finished_scores =
        topk_log_probs / std::pow(static_cast<double>(cur_len + 1 - prompt_len), settings.length_penalty);
    const bool beams_full = is_sent_finished.all().item<bool>() && stop_when_enough_finished;
    finished_scores = finished_scores + (beams_full ? kUnreachable : 0.0);
    finished_scores = finished_scores + (!heuristic_unsatisfied ? kUnreachable : 0.0);
    finished_scores = finished_scores + just_finished.logical_not().to(at::kFloat) * kUnreachable;
    const at::Tensor merged_scores = at::cat({beam_scores, finished_scores});
    const at::Tensor keep = std::get<1>(at::topk(merged_scores, num_beams));
    sequences = at::cat({sequences, topk_running_sequences}).index_select(0, keep);
    beam_scores = merged_scores.index_select(0, keep);
    beam_indices = at::cat({beam_indices, topk_running_beam_indices}).index_select(0, keep);
    is_sent_finished = at::cat({is_sent_finished, just_finished}).index_select(0, keep);

    steps.reorder(running_beam_indices.select(1, cur_len - prompt_len).contiguous());
    cur_len += 1;

    // _check_early_stop_heuristic
    const double best_length = settings.early_stopping == EarlyStopping::never && settings.length_penalty > 0.0
                                   ? static_cast<double>(max_length - prompt_len)
                                   : static_cast<double>(cur_len - prompt_len);
    const at::Tensor best_running = running_beam_scores.narrow(0, 0, 1) / std::pow(best_length, settings.length_penalty);
    const at::Tensor worst_finished =
        at::where(is_sent_finished, beam_scores.min(), at::full({}, kUnreachable, f32));
    heuristic_unsatisfied = heuristic_unsatisfied && best_running.gt(worst_finished).any().item<bool>();

    // _beam_search_has_unfinished_sequences
    const bool exists_open_beam = !(is_sent_finished.all().item<bool>() && stop_when_enough_finished);
    const bool valid_continuations = !hits.all().item<bool>();
    if (!(heuristic_unsatisfied && exists_open_beam && valid_continuations)) break;
    step_tokens = running_sequences.narrow(1, cur_len - 1, 1).clone();
  }

  const std::int64_t generated = beam_indices[0].ne(-1).sum().item<std::int64_t>();
  const at::Tensor best = sequences[0].narrow(0, 0, prompt_len + generated).contiguous();
  SearchResult result;
  result.sequence.assign(best.data_ptr<std::int64_t>(), best.data_ptr<std::int64_t>() + best.numel());
  result.score = beam_scores[0].item<double>();
  return result;
}

}  // namespace

SearchSettings SearchSettings::from(const GenerationConfig& config, std::int64_t prompt_length,
                                    std::optional<std::int64_t> max_new_tokens) {
  SearchSettings s;
  s.num_beams = config.num_beams;
  const std::optional<std::int64_t> new_tokens = max_new_tokens ? max_new_tokens : config.max_new_tokens;
  s.max_length = new_tokens ? prompt_length + *new_tokens : config.max_length;
  s.no_repeat_ngram_size = config.no_repeat_ngram_size;
  s.forced_bos_token_id = config.forced_bos_token_id;
  s.forced_eos_token_id = config.forced_eos_token_id;
  s.eos_token_ids = config.eos_token_ids;
  s.pad_token_id = config.pad_token_id;
  s.length_penalty = config.length_penalty;
  s.early_stopping = config.early_stopping;
  return s;
}

void apply_logits_processors(const at::Tensor& sequences, at::Tensor& scores, const SearchSettings& settings) {
  const std::int64_t cur_len = sequences.size(1);
  ban_repeated_ngrams(sequences, scores, settings.no_repeat_ngram_size);
  if (settings.forced_bos_token_id && cur_len == 1) force_token(scores, *settings.forced_bos_token_id, "forced_bos_token_id");
  if (settings.forced_eos_token_id && cur_len == settings.max_length - 1) {
    force_token(scores, *settings.forced_eos_token_id, "forced_eos_token_id");
  }
}

SearchResult generate(const std::vector<std::int64_t>& prompt, const SearchSettings& settings,
                      const DecoderSteps& steps) {
  if (prompt.empty()) throw InvalidArgumentError("generation needs a decoder prompt of at least one token");
  if (settings.num_beams < 1) {
    throw InvalidArgumentError(fmt::format("num_beams must be at least 1, got {}", settings.num_beams));
  }
  if (static_cast<std::int64_t>(prompt.size()) >= settings.max_length) {
    throw InvalidArgumentError(fmt::format("the decoder prompt has {} tokens; max_length {} leaves no room to generate",
                                           prompt.size(), settings.max_length));
  }
  return settings.num_beams == 1 ? greedy_search(prompt, settings, steps) : beam_search(prompt, settings, steps);
}

}  // namespace imagetotext::text
