// Decoding as transformers' generate() runs it (transformers 5.17, generation/utils.py), for any model that
// produces next-token logits for a set of running sequences: beam search (num_beams > 1) and greedy search
// (num_beams == 1), with the logits processors these models' generation configs turn on — no-repeat n-grams,
// forced BOS at the first step, forced EOS at the last — and the stopping rules (EOS, max_length,
// early_stopping, length_penalty). A batch of requests that share the decoder prompt and the settings (several
// images, one task): `batch` rows of `num_beams` sequences each, laid out row after row ([batch * num_beams]),
// as transformers' _expand_inputs_for_generation lays them out.
//
// The whole search lives on the model's device in tensors of fixed shapes: the running and finished
// sequences, their scores, the current length and the stop flags are device tensors, and a step reads nothing
// back to the host. So a model can record its decoder step and the search step together in one CUDA graph and
// replay it; the host only reads done() now and then. The beam step is a port of transformers' vectorized
// _beam_search (float32 scores, torch.topk on the same scores, so ties break the same way; the bookkeeping after
// it in one op, whose small selections keep topk's order), with the batch dimension transformers has: top-k per
// row, the early-stopping heuristic per row.
// Each row has its own done flag (its stopping rule as transformers' applies to a batch of one); a done row's
// result is frozen while the others go on, and the search is done when every row is. transformers steps a
// done row on until the whole batch stops, but its rules (finished scores pushed below -1e9 once a row cannot
// improve) leave that row's best sequence and score as they were, so freezing it gives the same results. Once
// the search is done, further steps leave the results unchanged, so a host that checks done() only every few
// steps may run a few too many.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <optional>
#include <utility>
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

  bool operator==(const SearchSettings&) const = default;

  // The settings generate() derives from a generation config for a decoder prompt of `prompt_length`
  // tokens: max_new_tokens (the argument, else the config's) wins over max_length, as in transformers.
  static SearchSettings from(const GenerationConfig& config, std::int64_t prompt_length,
                             std::optional<std::int64_t> max_new_tokens = std::nullopt);
};

struct SearchResult {
  std::vector<std::int64_t> sequence;  // the decoder prompt followed by the generated tokens
  double score = 0.0;                  // beam search: sum of log-probabilities / length^length_penalty
};

// The search state of `batch` requests on a device, for sequences of up to `capacity` tokens. A model drives it:
//
//   search.start(prompt, max_length);                 // (the model runs prompt[0 : -1] through its decoder)
//   repeat: logits = decoder(search.tokens() at search.position());  // [batch * num_beams, vocab]
//           search.step(logits);
//           reorder the decoder's caches by search.parents() (beam search only);
//   until search.done();  search.results();  (search.result() for a batch of one)
//
// Every tensor the step reads or writes keeps its storage from construction on, so a recorded step replays
// on new requests after start().
class DeviceSearch {
 public:
  // Throws InvalidArgumentError for an empty prompt, num_beams < 1, a prompt already at max_length, a
  // max_length past `capacity` or a forced token outside the vocabulary.
  static void validate(const std::vector<std::int64_t>& prompt, const SearchSettings& settings, std::int64_t vocab,
                       std::int64_t capacity);

  // `settings.max_length` is only the first request's: start() takes each request's. Throws
  // InvalidArgumentError for a batch below 1.
  DeviceSearch(const SearchSettings& settings, std::int64_t prompt_length, std::int64_t vocab, std::int64_t capacity,
               c10::Device device, std::int64_t batch = 1);

  // Whether steps recorded for this search serve a request with `settings`, a prompt of `prompt_length`
  // tokens and `batch` rows: the same settings up to max_length, which may be any that fits the capacity.
  bool serves(const SearchSettings& settings, std::int64_t prompt_length, std::int64_t batch = 1) const;

  // Resets the state in place for a request (every row starts from `prompt`).
  void start(const std::vector<std::int64_t>& prompt, std::int64_t max_length);

  // One step on `logits` [batch * num_beams, vocab] of each running sequence's last token: processors, scores,
  // the next tokens, the finished beams, the stop flags. Fixed shapes, no read-back to the host.
  void step(const at::Tensor& logits);

  // The next decoder input: the running sequences' last tokens [batch * num_beams, 1] and their position
  // (int64 [1]: every row has the same length, as transformers' cur_len).
  const at::Tensor& tokens() const noexcept { return tokens_; }
  const at::Tensor& position() const noexcept { return position_; }
  // After a beam step: which sequence each running sequence continues (int64 [batch * num_beams], indices into
  // the same flat layout, always within the sequence's own row); the model reorders its caches by it.
  const at::Tensor& parents() const noexcept { return parents_; }
  std::int64_t num_beams() const noexcept { return settings_.num_beams; }
  std::int64_t batch() const noexcept { return batch_; }
  // The most steps a request can take (max_length - prompt length): the model's loop stops there at the latest.
  std::int64_t max_steps() const noexcept { return max_length_ - prompt_length_; }

  // Reads the done flag back (synchronizes with the device).
  bool done() const;
  // Reads the best sequence and its score back (row 0).
  SearchResult result() const;
  // Reads every row's best sequence and score back, in row order.
  std::vector<SearchResult> results() const;

 private:
  at::Tensor process(at::Tensor scores) const;  // the logits processors, in transformers' order
  at::Tensor hits_stopping_criteria(const at::Tensor& last_tokens) const;
  void greedy_step(const at::Tensor& logits);
  void beam_step(const at::Tensor& logits);

  SearchSettings settings_;
  std::int64_t prompt_length_;
  std::int64_t batch_;
  std::int64_t vocab_;
  std::int64_t capacity_;
  std::int64_t beams_to_keep_;
  std::int64_t max_length_;  // this request's (the host's copy: max_steps)

  // Constants of the settings.
  at::Tensor eos_;                // [n_eos] int64
  at::Tensor forced_bos_row_;     // [vocab] float32: -inf but 0 at the forced token
  at::Tensor forced_eos_row_;
  at::Tensor length_penalties_;   // [capacity + 1] float32: k^length_penalty, rounded from double as Python does
  // Per request.
  at::Tensor max_length_on_device_;  // [1] int64
  at::Tensor cur_len_;               // [1] int64
  at::Tensor position_;              // [1] int64: cur_len - 1
  // (n = batch * num_beams: row after row.)
  at::Tensor tokens_;                // [n, 1] int64
  at::Tensor parents_;               // [n] int64
  at::Tensor running_sequences_;     // [n, capacity] int64
  at::Tensor running_scores_;        // [n] float32
  at::Tensor sequences_;             // [n, capacity] int64: the finished hypotheses (greedy: unused)
  at::Tensor scores_;                // [n] float32
  at::Tensor lengths_;               // [n] int64: the finished hypotheses' lengths (greedy: each row's length)
  at::Tensor finished_;              // [n] bool
  at::Tensor heuristic_unsatisfied_;  // [batch] bool
  at::Tensor row_done_;               // [batch] bool
  at::Tensor done_;                   // [1] bool: every row done
};

// Runs `step()` (one decoder step and search.step) until the search is done, reading the done flag back
// every `lookahead` steps (1: every step); the steps run past the end are no-ops on the results.
template <class Step>
void run_steps(DeviceSearch& search, Step&& step, std::int64_t lookahead = 1) {
  lookahead = lookahead < 1 ? 1 : lookahead;
  // Every step lengthens the sequences until max_length, where the search is done.
  for (std::int64_t steps = 0; steps < search.max_steps(); steps += lookahead) {
    for (std::int64_t i = 0; i < lookahead; ++i) step();
    if (search.done()) return;
  }
}

// run_steps, then row 0's result (a batch of one).
template <class Step>
SearchResult run_search(DeviceSearch& search, Step&& step, std::int64_t lookahead = 1) {
  run_steps(search, std::forward<Step>(step), lookahead);
  return search.result();
}

}  // namespace imagetotext::text
