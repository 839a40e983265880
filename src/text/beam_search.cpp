#include "imagetotext/text/beam_search.hpp"

#include <ATen/ops/all.h>
#include <ATen/ops/any.h>
#include <ATen/ops/arange.h>
#include <ATen/ops/argmax.h>
#include <ATen/ops/cat.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/full.h>
#include <ATen/ops/index_select.h>
#include <ATen/ops/log_softmax.h>
#include <ATen/ops/min.h>
#include <ATen/ops/tensor.h>
#include <ATen/ops/topk.h>
#include <ATen/ops/where.h>
#include <ATen/ops/zeros.h>
#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <cmath>
#include <limits>

#include "imagetotext/core/error.hpp"

namespace imagetotext::text {

namespace {

constexpr float kMinusInf = -std::numeric_limits<float>::infinity();
constexpr double kUnreachable = -1.0e9;  // transformers' stand-in for "never pick this beam"

at::Tensor forced_row(std::int64_t token, std::int64_t vocab, const at::TensorOptions& f32) {
  at::Tensor row = at::full({vocab}, kMinusInf, f32);
  row.narrow(0, token, 1).fill_(0.0);
  return row;
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

void DeviceSearch::validate(const std::vector<std::int64_t>& prompt, const SearchSettings& settings,
                            std::int64_t vocab, std::int64_t capacity) {
  if (prompt.empty()) throw InvalidArgumentError("generation needs a decoder prompt of at least one token");
  if (settings.num_beams < 1) {
    throw InvalidArgumentError(fmt::format("num_beams must be at least 1, got {}", settings.num_beams));
  }
  if (static_cast<std::int64_t>(prompt.size()) >= settings.max_length) {
    throw InvalidArgumentError(fmt::format("the decoder prompt has {} tokens; max_length {} leaves no room to generate",
                                           prompt.size(), settings.max_length));
  }
  if (settings.max_length > capacity) {
    throw InvalidArgumentError(
        fmt::format("max_length {} is past the decoder's {} positions", settings.max_length, capacity));
  }
  const auto check = [&](const std::optional<std::int64_t>& token, const char* what) {
    if (token && (*token < 0 || *token >= vocab)) {
      throw InvalidArgumentError(fmt::format("{} {} is outside the model's vocabulary of {}", what, *token, vocab));
    }
  };
  check(settings.forced_bos_token_id, "forced_bos_token_id");
  check(settings.forced_eos_token_id, "forced_eos_token_id");
  for (const std::int64_t token : prompt) check(token, "decoder prompt token");
}

DeviceSearch::DeviceSearch(const SearchSettings& settings, std::int64_t prompt_length, std::int64_t vocab,
                           std::int64_t capacity, c10::Device device)
    : settings_(settings),
      prompt_length_(prompt_length),
      vocab_(vocab),
      capacity_(capacity),
      beams_to_keep_(std::max<std::int64_t>(2, 1 + static_cast<std::int64_t>(settings.eos_token_ids.size())) *
                     settings.num_beams),
      max_length_(settings.max_length) {
  const std::int64_t n = settings.num_beams;
  const auto i64 = at::TensorOptions().device(device).dtype(at::kLong);
  const auto f32 = at::TensorOptions().device(device).dtype(at::kFloat);
  const auto flag = at::TensorOptions().device(device).dtype(at::kBool);
  eos_ = at::tensor(settings.eos_token_ids, at::TensorOptions().dtype(at::kLong)).to(device);
  if (settings.forced_bos_token_id) forced_bos_row_ = forced_row(*settings.forced_bos_token_id, vocab, f32);
  if (settings.forced_eos_token_id) forced_eos_row_ = forced_row(*settings.forced_eos_token_id, vocab, f32);
  const std::int64_t ngram = settings.no_repeat_ngram_size;
  if (ngram > 0 && capacity - ngram + 1 > 0) {
    ngram_starts_ = at::arange(capacity - ngram + 1, i64);
    ngram_offsets_ = at::arange(ngram - 1, i64);
  }
  // Python's (length ** length_penalty) is a double that the float32 division rounds to float.
  std::vector<float> penalties(static_cast<std::size_t>(capacity + 1));
  for (std::size_t k = 0; k < penalties.size(); ++k) {
    penalties[k] = static_cast<float>(std::pow(static_cast<double>(k), settings.length_penalty));
  }
  length_penalties_ = at::tensor(penalties, at::TensorOptions().dtype(at::kFloat)).to(device);
  top_num_beam_mask_ = at::zeros({beams_to_keep_}, flag);
  top_num_beam_mask_.narrow(0, 0, n).fill_(true);

  max_length_on_device_ = at::zeros({1}, i64);
  cur_len_ = at::zeros({1}, i64);
  position_ = at::zeros({1}, i64);
  tokens_ = at::zeros({n, 1}, i64);
  parents_ = at::arange(n, i64);
  running_sequences_ = at::zeros({n, capacity}, i64);
  running_scores_ = at::zeros({n}, f32);
  sequences_ = at::zeros({n, capacity}, i64);
  scores_ = at::zeros({n}, f32);
  lengths_ = at::zeros({n}, i64);
  finished_ = at::zeros({n}, flag);
  heuristic_unsatisfied_ = at::zeros({1}, flag);
  done_ = at::zeros({1}, flag);
}

bool DeviceSearch::serves(const SearchSettings& settings, std::int64_t prompt_length) const {
  SearchSettings same_length = settings;
  same_length.max_length = settings_.max_length;
  return same_length == settings_ && prompt_length == prompt_length_ && settings.max_length <= capacity_;
}

void DeviceSearch::start(const std::vector<std::int64_t>& prompt, std::int64_t max_length) {
  if (static_cast<std::int64_t>(prompt.size()) != prompt_length_ || max_length <= prompt_length_ ||
      max_length > capacity_) {
    throw InvalidArgumentError(fmt::format("a search set up for prompts of {} tokens and up to {} positions cannot "
                                           "start a prompt of {} tokens with max_length {}",
                                           prompt_length_, capacity_, prompt.size(), max_length));
  }
  max_length_ = max_length;
  const at::Tensor prompt_row =
      at::tensor(prompt, at::TensorOptions().dtype(at::kLong)).to(running_sequences_.device()).unsqueeze(0);
  // transformers' `pad_token_id or eos_token_id[0] if eos_token_id is not None else -1`.
  const auto& eos = settings_.eos_token_ids;
  const std::int64_t fill = eos.empty() ? -1 : settings_.pad_token_id.value_or(0) != 0 ? *settings_.pad_token_id : eos[0];
  running_sequences_.fill_(fill);
  running_sequences_.narrow(1, 0, prompt_length_).copy_(prompt_row.expand({settings_.num_beams, prompt_length_}));
  sequences_.copy_(running_sequences_);
  running_scores_.fill_(0.0);
  if (settings_.num_beams > 1) running_scores_.narrow(0, 1, settings_.num_beams - 1).fill_(kUnreachable);
  scores_.fill_(kUnreachable);
  lengths_.fill_(prompt_length_);  // no generated token: transformers' beam_indices all -1
  finished_.fill_(false);
  heuristic_unsatisfied_.fill_(true);
  done_.fill_(false);
  max_length_on_device_.fill_(max_length);
  cur_len_.fill_(prompt_length_);
  position_.fill_(prompt_length_ - 1);
  tokens_.fill_(prompt.back());
  parents_.copy_(at::arange(settings_.num_beams, parents_.options()));
}

at::Tensor DeviceSearch::process(at::Tensor scores) const {
  // NoRepeatNGramLogitsProcessor: a token that would complete an n-gram already in the sequence is banned.
  // Every start s of an n-gram is compared at once: its first n-1 tokens against the last n-1 of the sequence,
  // counted only where the n-gram lies within the sequence (s + n <= cur_len).
  const std::int64_t n = settings_.no_repeat_ngram_size;
  if (ngram_starts_.defined()) {
    const std::int64_t starts = ngram_starts_.size(0), beams = running_sequences_.size(0);
    at::Tensor repeated = ngram_starts_.le(cur_len_ - n).unsqueeze(0).expand({beams, starts});
    if (n > 1) {
      const at::Tensor last = running_sequences_.index_select(1, (ngram_offsets_ + (cur_len_ - (n - 1))).clamp_min(0));
      const at::Tensor prefixes = running_sequences_.unfold(1, n - 1, 1).narrow(1, 0, starts);
      repeated = repeated.logical_and(prefixes.eq(last.unsqueeze(1)).all(-1));
    }
    // The positions past cur_len hold the fill value (maybe -1) and never count: clamp them into the vocabulary.
    const at::Tensor completions = running_sequences_.narrow(1, n - 1, starts).clamp(0, vocab_ - 1);
    const at::Tensor bans = at::zeros({beams, vocab_}, completions.options().dtype(at::kInt))
                                .scatter_add_(1, completions, repeated.to(at::kInt));
    scores = scores.masked_fill(bans.gt(0), kMinusInf);
  }
  if (forced_bos_row_.defined()) scores = at::where(cur_len_.eq(1).unsqueeze(1), forced_bos_row_, scores);
  if (forced_eos_row_.defined()) {
    scores = at::where(cur_len_.eq(max_length_on_device_ - 1).unsqueeze(1), forced_eos_row_, scores);
  }
  return scores;
}

at::Tensor DeviceSearch::hits_stopping_criteria(const at::Tensor& last_tokens) const {
  // MaxLengthCriteria (the sequences are cur_len + 1 long) and EosTokenCriteria.
  at::Tensor hits = (cur_len_ + 1).ge(max_length_on_device_).expand({last_tokens.size(0)});
  if (eos_.numel() > 0) hits = hits.logical_or(last_tokens.unsqueeze(1).eq(eos_.unsqueeze(0)).any(1));
  return hits;
}

void DeviceSearch::step(const at::Tensor& logits) {
  if (logits.dim() != 2 || logits.size(0) != settings_.num_beams || logits.size(1) != vocab_) {
    throw InvalidArgumentError(fmt::format("the search takes logits [{}, {}], got [{}]", settings_.num_beams, vocab_,
                                           fmt::join(logits.sizes(), ", ")));
  }
  if (settings_.num_beams == 1) {
    greedy_step(logits.to(at::kFloat));
  } else {
    beam_step(logits.to(at::kFloat));
  }
}

// transformers' _sample without sampling: argmax of the processed logits, until EOS or max_length.
void DeviceSearch::greedy_step(const at::Tensor& logits) {
  const at::Tensor next = process(logits).argmax(-1);  // [1]
  // Once done, cur_len may equal the capacity: the (unchanged) write goes to the last column instead.
  const at::Tensor column = cur_len_.clamp_max(capacity_ - 1);
  const at::Tensor kept = running_sequences_.index_select(1, column).view({1});
  running_sequences_.index_copy_(1, column, at::where(done_, kept, next).view({1, 1}));
  const at::Tensor hits = hits_stopping_criteria(next);
  cur_len_.add_(done_.logical_not().to(at::kLong));
  done_.logical_or_(hits);
  position_.copy_(cur_len_ - 1);
  tokens_.copy_(next.view({1, 1}));
}

// transformers' _beam_search for batch size 1 (names follow it).
void DeviceSearch::beam_step(const at::Tensor& logits) {
  const std::int64_t n = settings_.num_beams;
  const bool stop_when_enough_finished = settings_.early_stopping == EarlyStopping::when_enough_finished;
  const at::Tensor was_done = done_.clone();

  at::Tensor log_probs = process(at::log_softmax(logits, -1));
  log_probs = (log_probs + running_scores_.unsqueeze(1)).reshape({n * vocab_});

  // _get_top_k_continuations
  auto [topk_log_probs, topk_indices] = at::topk(log_probs, beams_to_keep_);
  const at::Tensor topk_current_beam = topk_indices.div(vocab_, "floor");
  const at::Tensor topk_ids = topk_indices.remainder(vocab_);
  at::Tensor topk_running_sequences = running_sequences_.index_select(0, topk_current_beam);
  topk_running_sequences.index_copy_(1, cur_len_, topk_ids.unsqueeze(1));
  const at::Tensor hits = hits_stopping_criteria(topk_ids);

  // _get_running_beams_for_next_iteration
  const at::Tensor topk_running_log_probs = topk_log_probs + hits.to(at::kFloat) * kUnreachable;
  const at::Tensor next_topk = std::get<1>(at::topk(topk_running_log_probs, n));
  running_sequences_.copy_(topk_running_sequences.index_select(0, next_topk));
  running_scores_.copy_(topk_running_log_probs.index_select(0, next_topk));
  parents_.copy_(topk_current_beam.index_select(0, next_topk));

  // _update_finished_beams
  const at::Tensor just_finished = hits.logical_and(top_num_beam_mask_);
  at::Tensor finished_scores = topk_log_probs / length_penalties_.index_select(0, cur_len_ + 1 - prompt_length_);
  if (stop_when_enough_finished) finished_scores = finished_scores + finished_.all().to(at::kFloat) * kUnreachable;
  finished_scores = finished_scores + heuristic_unsatisfied_.logical_not().to(at::kFloat) * kUnreachable;
  finished_scores = finished_scores + just_finished.logical_not().to(at::kFloat) * kUnreachable;
  const at::Tensor merged_scores = at::cat({scores_, finished_scores});
  const at::Tensor keep = std::get<1>(at::topk(merged_scores, n));
  // After the search is done, extra steps leave the result as it was.
  const auto update = [&](at::Tensor& kept, const at::Tensor& candidates) {
    const at::Tensor selected = candidates.index_select(0, keep);
    kept.copy_(at::where(selected.dim() == 2 ? was_done.unsqueeze(1) : was_done, kept, selected));
  };
  update(sequences_, at::cat({sequences_, topk_running_sequences}));
  update(lengths_, at::cat({lengths_, (cur_len_ + 1).expand({beams_to_keep_})}));
  update(finished_, at::cat({finished_, just_finished}));
  update(scores_, merged_scores);

  cur_len_.add_(was_done.logical_not().to(at::kLong));
  position_.copy_(cur_len_ - 1);
  tokens_.copy_(running_sequences_.index_select(1, position_));

  // _check_early_stop_heuristic
  const at::Tensor best_length = settings_.early_stopping == EarlyStopping::never && settings_.length_penalty > 0.0
                                     ? max_length_on_device_ - prompt_length_
                                     : cur_len_ - prompt_length_;
  const at::Tensor best_running = running_scores_.narrow(0, 0, 1) / length_penalties_.index_select(0, best_length);
  const at::Tensor worst_finished = at::where(finished_, scores_.min(), at::full({}, kUnreachable, scores_.options()));
  heuristic_unsatisfied_.logical_and_(best_running.gt(worst_finished).any().view({1}));

  // _beam_search_has_unfinished_sequences
  at::Tensor unfinished = heuristic_unsatisfied_.logical_and(hits.all().logical_not());
  if (stop_when_enough_finished) unfinished = unfinished.logical_and(finished_.all().logical_not());
  done_.logical_or_(unfinished.logical_not());
}

bool DeviceSearch::done() const { return done_.item<bool>(); }

SearchResult DeviceSearch::result() const {
  const bool beams = settings_.num_beams > 1;
  const std::int64_t length = (beams ? lengths_.narrow(0, 0, 1) : cur_len_).item<std::int64_t>();
  const at::Tensor best = (beams ? sequences_ : running_sequences_)[0].narrow(0, 0, length).cpu().contiguous();
  SearchResult result;
  result.sequence.assign(best.data_ptr<std::int64_t>(), best.data_ptr<std::int64_t>() + best.numel());
  result.score = beams ? scores_[0].item<double>() : 0.0;
  return result;
}

}  // namespace imagetotext::text
