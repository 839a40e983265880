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
#include "../ops/search_ops.hpp"

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
                           std::int64_t capacity, c10::Device device, std::int64_t batch)
    : settings_(settings),
      prompt_length_(prompt_length),
      batch_(batch),
      vocab_(vocab),
      capacity_(capacity),
      beams_to_keep_(std::max<std::int64_t>(2, 1 + static_cast<std::int64_t>(settings.eos_token_ids.size())) *
                     settings.num_beams),
      max_length_(settings.max_length) {
  if (batch < 1) throw InvalidArgumentError(fmt::format("a search needs a batch of at least 1, got {}", batch));
  const std::int64_t beams = settings.num_beams, n = batch * beams;
  const auto i64 = at::TensorOptions().device(device).dtype(at::kLong);
  const auto f32 = at::TensorOptions().device(device).dtype(at::kFloat);
  const auto flag = at::TensorOptions().device(device).dtype(at::kBool);
  eos_ = at::tensor(settings.eos_token_ids, at::TensorOptions().dtype(at::kLong)).to(device);
  if (settings.forced_bos_token_id) forced_bos_row_ = forced_row(*settings.forced_bos_token_id, vocab, f32);
  if (settings.forced_eos_token_id) forced_eos_row_ = forced_row(*settings.forced_eos_token_id, vocab, f32);
  // Python's (length ** length_penalty) is a double that the float32 division rounds to float.
  std::vector<float> penalties(static_cast<std::size_t>(capacity + 1));
  for (std::size_t k = 0; k < penalties.size(); ++k) {
    penalties[k] = static_cast<float>(std::pow(static_cast<double>(k), settings.length_penalty));
  }
  length_penalties_ = at::tensor(penalties, at::TensorOptions().dtype(at::kFloat)).to(device);
  top_num_beam_mask_ = at::zeros({beams_to_keep_}, flag);
  top_num_beam_mask_.narrow(0, 0, beams).fill_(true);
  const at::Tensor rows = at::arange(batch, i64).unsqueeze(1);
  row_starts_ = rows * beams;
  topk_row_starts_ = rows * beams_to_keep_;
  merged_row_starts_ = rows * (beams + beams_to_keep_);

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
  heuristic_unsatisfied_ = at::zeros({batch}, flag);
  row_done_ = at::zeros({batch}, flag);
  done_ = batch == 1 ? row_done_ : at::zeros({1}, flag);  // a batch of one: the same flag, no extra kernel
}

bool DeviceSearch::serves(const SearchSettings& settings, std::int64_t prompt_length, std::int64_t batch) const {
  SearchSettings same_length = settings;
  same_length.max_length = settings_.max_length;
  return same_length == settings_ && prompt_length == prompt_length_ && batch == batch_ &&
         settings.max_length <= capacity_;
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
  const std::int64_t n = running_sequences_.size(0);
  running_sequences_.narrow(1, 0, prompt_length_).copy_(prompt_row.expand({n, prompt_length_}));
  sequences_.copy_(running_sequences_);
  // Each row's first beam at 0, the others out of reach, so the first step expands one beam per row.
  running_scores_.view({batch_, settings_.num_beams}).select(1, 0).fill_(0.0);
  if (settings_.num_beams > 1) {
    running_scores_.view({batch_, settings_.num_beams}).narrow(1, 1, settings_.num_beams - 1).fill_(kUnreachable);
  }
  scores_.fill_(kUnreachable);
  lengths_.fill_(prompt_length_);  // no generated token: transformers' beam_indices all -1
  finished_.fill_(false);
  heuristic_unsatisfied_.fill_(true);
  row_done_.fill_(false);
  done_.fill_(false);
  max_length_on_device_.fill_(max_length);
  cur_len_.fill_(prompt_length_);
  position_.fill_(prompt_length_ - 1);
  tokens_.fill_(prompt.back());
  parents_.copy_(at::arange(n, parents_.options()));
}

at::Tensor DeviceSearch::process(at::Tensor scores) const {
  // NoRepeatNGramLogitsProcessor (one kernel on CUDA, where ATen's composition of it took a dozen a step).
  const std::int64_t n = settings_.no_repeat_ngram_size;
  if (n > 0 && n <= capacity_) scores = ops::ban_repeated_ngrams(scores, running_sequences_, cur_len_, n);
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
  const std::int64_t rows = batch_ * settings_.num_beams;
  if (logits.dim() != 2 || logits.size(0) != rows || logits.size(1) != vocab_) {
    throw InvalidArgumentError(fmt::format("the search takes logits [{}, {}], got [{}]", rows, vocab_,
                                           fmt::join(logits.sizes(), ", ")));
  }
  if (settings_.num_beams == 1) {
    greedy_step(logits.to(at::kFloat));
  } else {
    beam_step(logits.to(at::kFloat));
  }
}

// transformers' _sample without sampling: argmax of the processed logits, each row until its EOS or max_length.
void DeviceSearch::greedy_step(const at::Tensor& logits) {
  const at::Tensor& was_done = row_done_;  // (read before this step updates it)
  const at::Tensor next = process(logits).argmax(-1);  // [batch]
  // A done row keeps what it had (its length is frozen, so that is never read). Once the search is done, cur_len
  // may equal the capacity: the (unchanged) write goes to the last column instead.
  const at::Tensor column = cur_len_.clamp_max(capacity_ - 1);
  const at::Tensor kept = running_sequences_.index_select(1, column).view({batch_});
  running_sequences_.index_copy_(1, column, at::where(was_done, kept, next).view({batch_, 1}));
  lengths_.copy_(at::where(was_done, lengths_, cur_len_ + 1));
  const at::Tensor hits = hits_stopping_criteria(next);  // (at this step's cur_len)
  cur_len_.add_(done_.logical_not().to(at::kLong));     // (done_ still says whether every row was done before)
  row_done_.logical_or_(hits);
  if (batch_ > 1) done_.copy_(row_done_.all().view({1}));
  position_.copy_(cur_len_ - 1);
  tokens_.copy_(next.view({batch_, 1}));
}

// transformers' vectorized _beam_search (names follow it): [batch, beams] views of the flat state.
void DeviceSearch::beam_step(const at::Tensor& logits) {
  const std::int64_t b = batch_, n = settings_.num_beams, k = beams_to_keep_;
  const bool stop_when_enough_finished = settings_.early_stopping == EarlyStopping::when_enough_finished;
  const at::Tensor& was_done = row_done_;  // [b] (read before this step updates it, at the end)

  at::Tensor log_probs = process(at::log_softmax(logits, -1));
  log_probs = (log_probs + running_scores_.unsqueeze(1)).reshape({b, n * vocab_});

  // _get_top_k_continuations: per row; flat indices into the [b * n] state are row_start + beam.
  auto [topk_log_probs, topk_indices] = at::topk(log_probs, k);  // [b, k]
  at::Tensor topk_current_beam = topk_indices.div(vocab_, "floor");
  if (b > 1) topk_current_beam = topk_current_beam + row_starts_;
  const at::Tensor topk_ids = topk_indices.remainder(vocab_).reshape({b * k});
  at::Tensor topk_running_sequences = running_sequences_.index_select(0, topk_current_beam.reshape({b * k}));
  topk_running_sequences.index_copy_(1, cur_len_, topk_ids.unsqueeze(1));
  const at::Tensor hits = hits_stopping_criteria(topk_ids).view({b, k});

  // _get_running_beams_for_next_iteration
  const at::Tensor topk_running_log_probs = topk_log_probs + hits.to(at::kFloat) * kUnreachable;
  at::Tensor next_topk = std::get<1>(at::topk(topk_running_log_probs, n));
  next_topk = (b > 1 ? next_topk + topk_row_starts_ : next_topk).reshape({b * n});
  running_sequences_.copy_(topk_running_sequences.index_select(0, next_topk));
  running_scores_.copy_(topk_running_log_probs.reshape({b * k}).index_select(0, next_topk));
  parents_.copy_(topk_current_beam.reshape({b * k}).index_select(0, next_topk));

  // _update_finished_beams
  const at::Tensor finished = finished_.view({b, n});
  const at::Tensor just_finished = hits.logical_and(top_num_beam_mask_);
  at::Tensor finished_scores = topk_log_probs / length_penalties_.index_select(0, cur_len_ + 1 - prompt_length_);
  if (stop_when_enough_finished) {
    finished_scores = finished_scores + finished.all(1, /*keepdim=*/true).to(at::kFloat) * kUnreachable;
  }
  finished_scores = finished_scores + heuristic_unsatisfied_.logical_not().unsqueeze(1).to(at::kFloat) * kUnreachable;
  finished_scores = finished_scores + just_finished.logical_not().to(at::kFloat) * kUnreachable;
  const at::Tensor merged_scores = at::cat({scores_.view({b, n}), finished_scores}, 1);  // [b, n + k]
  at::Tensor keep = std::get<1>(at::topk(merged_scores, n));
  keep = (b > 1 ? keep + merged_row_starts_ : keep).reshape({b * n});
  // A row already done keeps its results; so does every row after the search is done.
  const at::Tensor frozen = was_done.unsqueeze(1).expand({b, n}).reshape({b * n});
  const auto update = [&](at::Tensor& kept, const at::Tensor& old_rows, const at::Tensor& new_rows) {
    // [b * n, ...] and [b * k, ...] -> the row-by-row merge [b * (n + k), ...], as torch.cat(dim=1) of [b, ., ...].
    const auto by_row = [&](const at::Tensor& t, std::int64_t per_row) {
      std::vector<std::int64_t> shape{b, per_row};
      shape.insert(shape.end(), t.sizes().begin() + 1, t.sizes().end());
      return t.reshape(shape);
    };
    at::Tensor merged = at::cat({by_row(old_rows, n), by_row(new_rows, k)}, 1);
    std::vector<std::int64_t> flat{b * (n + k)};
    flat.insert(flat.end(), kept.sizes().begin() + 1, kept.sizes().end());
    const at::Tensor selected = merged.reshape(flat).index_select(0, keep);
    kept.copy_(at::where(selected.dim() == 2 ? frozen.unsqueeze(1) : frozen, kept, selected));
  };
  update(sequences_, sequences_, topk_running_sequences);
  update(lengths_, lengths_, (cur_len_ + 1).expand({b * k}));
  update(finished_, finished_, just_finished.reshape({b * k}));
  update(scores_, scores_, finished_scores.reshape({b * k}));

  cur_len_.add_(done_.logical_not().to(at::kLong));
  position_.copy_(cur_len_ - 1);
  tokens_.copy_(running_sequences_.index_select(1, position_));

  // _check_early_stop_heuristic, per row
  const at::Tensor best_length = settings_.early_stopping == EarlyStopping::never && settings_.length_penalty > 0.0
                                     ? max_length_on_device_ - prompt_length_
                                     : cur_len_ - prompt_length_;
  const at::Tensor best_running =
      running_scores_.view({b, n}).narrow(1, 0, 1) / length_penalties_.index_select(0, best_length);  // [b, 1]
  const at::Tensor worst_finished = at::where(finished, std::get<0>(scores_.view({b, n}).min(1, /*keepdim=*/true)),
                                              at::full({}, kUnreachable, scores_.options()));
  heuristic_unsatisfied_.logical_and_(best_running.gt(worst_finished).any(1));

  // _beam_search_has_unfinished_sequences, per row: a row is done when it cannot improve, all its continuations
  // hit a stopping criterion, or (early_stopping=True) all its beams have finished.
  at::Tensor unfinished = heuristic_unsatisfied_.logical_and(hits.all(1).logical_not());
  if (stop_when_enough_finished) unfinished = unfinished.logical_and(finished.all(1).logical_not());
  row_done_.logical_or_(unfinished.logical_not());
  if (b > 1) done_.copy_(row_done_.all().view({1}));
}

bool DeviceSearch::done() const { return done_.item<bool>(); }

std::vector<SearchResult> DeviceSearch::results() const {
  // Beam search: each row's best finished hypothesis (its first); greedy: each row's one sequence.
  const bool beams = settings_.num_beams > 1;
  const std::int64_t n = settings_.num_beams;
  const at::Tensor best = (beams ? sequences_ : running_sequences_).view({batch_, n, capacity_}).select(1, 0).cpu().contiguous();
  const at::Tensor lengths = lengths_.view({batch_, n}).select(1, 0).cpu().contiguous();
  const at::Tensor scores = scores_.view({batch_, n}).select(1, 0).cpu().contiguous();
  std::vector<SearchResult> results(static_cast<std::size_t>(batch_));
  for (std::int64_t row = 0; row < batch_; ++row) {
    const std::int64_t* tokens = best.data_ptr<std::int64_t>() + row * capacity_;
    results[row].sequence.assign(tokens, tokens + lengths.data_ptr<std::int64_t>()[row]);
    results[row].score = beams ? scores.data_ptr<float>()[row] : 0.0;
  }
  return results;
}

SearchResult DeviceSearch::result() const { return results().front(); }

}  // namespace imagetotext::text
