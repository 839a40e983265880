#include "imagetotext/text/beam_search.hpp"

#include <ATen/ops/all.h>
#include <ATen/ops/any.h>
#include <ATen/ops/arange.h>
#include <ATen/ops/argmax.h>
#include <ATen/ops/full.h>
#include <ATen/ops/index_select.h>
#include <ATen/ops/log_softmax.h>
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
    running_scores_.view({batch_, settings_.num_beams})
        .narrow(1, 1, settings_.num_beams - 1)
        .fill_(ops::beam::kUnreachable);
  }
  scores_.fill_(ops::beam::kUnreachable);
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

// transformers' vectorized _beam_search: the log-probs and their topk here, the rest of the step in one op
// (ops::beam_search_update, the rules in src/ops/beam_step.hpp).
void DeviceSearch::beam_step(const at::Tensor& logits) {
  const std::int64_t b = batch_, n = settings_.num_beams;
  at::Tensor log_probs = process(at::log_softmax(logits, -1));
  log_probs = (log_probs + running_scores_.unsqueeze(1)).reshape({b, n * vocab_});
  const auto [topk_log_probs, topk_indices] = at::topk(log_probs, beams_to_keep_);  // _get_top_k_continuations
  const ops::BeamSearchState state{running_sequences_, running_scores_, parents_, sequences_, scores_,
                                   lengths_,           finished_,       heuristic_unsatisfied_, row_done_, done_,
                                   cur_len_,           position_,       tokens_};
  ops::BeamSearchRules rules{eos_, length_penalties_, max_length_on_device_, vocab_, prompt_length_};
  switch (settings_.early_stopping) {
    case EarlyStopping::heuristic: rules.early_stopping = ops::beam::heuristic; break;
    case EarlyStopping::when_enough_finished: rules.early_stopping = ops::beam::when_enough_finished; break;
    case EarlyStopping::never: rules.early_stopping = ops::beam::never; break;
  }
  rules.length_penalty = settings_.length_penalty;
  ops::beam_search_update(topk_log_probs, topk_indices, state, rules);
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
