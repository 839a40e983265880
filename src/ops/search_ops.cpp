#include "search_ops.hpp"

#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/util/Exception.h>

namespace imagetotext::ops {

namespace detail {

void check_ban_repeated_ngrams(const at::Tensor& scores, const at::Tensor& sequences, const at::Tensor& length,
                               int64_t n) {
  constexpr const char* op = "ban_repeated_ngrams";
  TORCH_CHECK_VALUE(scores.dim() == 2 && scores.scalar_type() == at::kFloat, op,
                    ": scores must be float32 [rows, vocab], got ", scores.scalar_type(), " ", scores.sizes());
  TORCH_CHECK_VALUE(sequences.dim() == 2 && sequences.size(0) == scores.size(0) &&
                        sequences.scalar_type() == at::kLong && sequences.device() == scores.device(),
                    op, ": sequences must be int64 [", scores.size(0), ", capacity] on ", scores.device(), ", got ",
                    sequences.scalar_type(), " ", sequences.sizes(), " on ", sequences.device());
  TORCH_CHECK_VALUE(length.numel() == 1 && length.scalar_type() == at::kLong && length.device() == scores.device(), op,
                    ": length must be one int64 on ", scores.device(), ", got ", length.scalar_type(), " ",
                    length.sizes(), " on ", length.device());
  TORCH_CHECK_VALUE(n >= 1, op, ": n must be at least 1, got ", n);
}

beam::Step check_beam_search_update(const at::Tensor& topk_log_probs, const at::Tensor& topk_indices,
                                    at::TensorList state, const at::Tensor& eos, const at::Tensor& length_penalties,
                                    const at::Tensor& max_length, int64_t vocab, int64_t prompt_length,
                                    int64_t early_stopping, double length_penalty) {
  constexpr const char* op = "beam_search_update";
  const c10::Device device = topk_log_probs.device();
  TORCH_CHECK_VALUE(topk_log_probs.dim() == 2 && topk_log_probs.scalar_type() == at::kFloat, op,
                    ": topk_log_probs must be float32 [batch, keep], got ", topk_log_probs.scalar_type(), " ",
                    topk_log_probs.sizes());
  const int64_t batch = topk_log_probs.size(0), keep = topk_log_probs.size(1);
  TORCH_CHECK_VALUE(state.size() == 13, op, ": state must hold the 13 tensors of BeamSearchState, got ", state.size());
  TORCH_CHECK_VALUE(state[0].dim() == 2 && batch >= 1 && state[0].size(0) % batch == 0, op,
                    ": running_sequences must be [batch * beams, capacity] for a batch of ", batch, ", got ",
                    state[0].sizes());
  const int64_t n = state[0].size(0), beams = n / batch, capacity = state[0].size(1);
  TORCH_CHECK_VALUE(beams >= 1 && keep >= beams, op, ": ", keep, " continuations a row cannot keep ", beams, " beams");
  TORCH_CHECK_VALUE(vocab >= 1, op, ": vocab must be at least 1, got ", vocab);
  TORCH_CHECK_VALUE(prompt_length >= 1 && prompt_length <= capacity, op, ": prompt_length ", prompt_length,
                    " outside 1 .. ", capacity);
  TORCH_CHECK_VALUE(early_stopping >= 0 && early_stopping <= 2, op,
                    ": early_stopping must be 0 (False), 1 (True) or 2 (never), got ", early_stopping);
  const auto expect = [&](const at::Tensor& t, const char* name, at::ScalarType dtype, at::IntArrayRef shape) {
    TORCH_CHECK_VALUE(t.scalar_type() == dtype && t.sizes() == shape && t.device() == device && t.is_contiguous(), op,
                      ": ", name, " must be a contiguous ", dtype, " ", shape, " on ", device, ", got ",
                      t.scalar_type(), " ", t.sizes(), " on ", t.device(), t.is_contiguous() ? "" : " (strided)");
  };
  expect(topk_log_probs, "topk_log_probs", at::kFloat, {batch, keep});
  expect(topk_indices, "topk_indices", at::kLong, {batch, keep});
  expect(state[0], "running_sequences", at::kLong, {n, capacity});
  expect(state[1], "running_scores", at::kFloat, {n});
  expect(state[2], "parents", at::kLong, {n});
  expect(state[3], "sequences", at::kLong, {n, capacity});
  expect(state[4], "scores", at::kFloat, {n});
  expect(state[5], "lengths", at::kLong, {n});
  expect(state[6], "finished", at::kBool, {n});
  expect(state[7], "heuristic_unsatisfied", at::kBool, {batch});
  expect(state[8], "row_done", at::kBool, {batch});
  expect(state[9], "done", at::kBool, {1});
  expect(state[10], "cur_len", at::kLong, {1});
  expect(state[11], "position", at::kLong, {1});
  expect(state[12], "tokens", at::kLong, {n, 1});
  TORCH_CHECK_VALUE(eos.dim() == 1, op, ": eos must be 1-D, got ", eos.sizes());
  expect(eos, "eos", at::kLong, {eos.size(0)});
  expect(length_penalties, "length_penalties", at::kFloat, {capacity + 1});
  expect(max_length, "max_length", at::kLong, {1});

  beam::Step s{};
  s.topk_log_probs = topk_log_probs.data_ptr<float>();
  s.topk_indices = topk_indices.data_ptr<int64_t>();
  s.eos = eos.data_ptr<int64_t>();
  s.length_penalties = length_penalties.data_ptr<float>();
  s.max_length = max_length.data_ptr<int64_t>();
  s.n_eos = eos.size(0);
  s.batch = batch;
  s.beams = beams;
  s.keep = keep;
  s.vocab = vocab;
  s.capacity = capacity;
  s.prompt_length = prompt_length;
  s.early_stopping = early_stopping;
  s.positive_length_penalty = length_penalty > 0.0;
  s.running_sequences = state[0].data_ptr<int64_t>();
  s.running_scores = state[1].data_ptr<float>();
  s.parents = state[2].data_ptr<int64_t>();
  s.sequences = state[3].data_ptr<int64_t>();
  s.scores = state[4].data_ptr<float>();
  s.lengths = state[5].data_ptr<int64_t>();
  s.finished = state[6].data_ptr<bool>();
  s.heuristic_unsatisfied = state[7].data_ptr<bool>();
  s.row_done = state[8].data_ptr<bool>();
  s.done = state[9].data_ptr<bool>();
  s.cur_len = state[10].data_ptr<int64_t>();
  s.position = state[11].data_ptr<int64_t>();
  s.tokens = state[12].data_ptr<int64_t>();
  return s;
}

int64_t check_greedy_advance(const at::Tensor& logits, const at::Tensor& tokens, const at::Tensor& generated,
                             const at::Tensor& step, const at::Tensor& position) {
  constexpr const char* op = "greedy_advance";
  const c10::Device device = logits.device();
  const at::ScalarType dtype = logits.scalar_type();
  TORCH_CHECK_VALUE(logits.dim() == 2 && logits.size(0) >= 1 && logits.size(1) >= 1 &&
                        (dtype == at::kFloat || dtype == at::kHalf || dtype == at::kBFloat16),
                    op, ": logits must be float32, float16 or bfloat16 [batch, vocab], got ", dtype, " ", logits.sizes());
  TORCH_CHECK_VALUE(logits.stride(1) == 1, op, ": logits' rows must be contiguous, got strides ", logits.strides());
  const int64_t batch = logits.size(0);
  const auto expect = [&](const at::Tensor& t, const char* name, std::vector<int64_t> shape) {
    TORCH_CHECK_VALUE(t.scalar_type() == at::kLong && t.sizes() == at::IntArrayRef(shape) && t.device() == device &&
                          t.is_contiguous(),
                      op, ": ", name, " must be a contiguous int64 ", at::IntArrayRef(shape), " on ", device, ", got ",
                      t.scalar_type(), " ", t.sizes(), " on ", t.device(), t.is_contiguous() ? "" : " (strided)");
  };
  expect(tokens, "tokens", {batch, 1});
  TORCH_CHECK_VALUE(generated.dim() == 2, op, ": generated must be int64 [capacity, ", batch, "], got ",
                    generated.sizes());
  expect(generated, "generated", {generated.size(0), batch});
  expect(step, "step", {1});
  expect(position, "position", {1});
  return logits.size(1);
}

}  // namespace detail

std::vector<at::Tensor> BeamSearchState::list() const {
  return {running_sequences, running_scores, parents, sequences, scores, lengths, finished,
          heuristic_unsatisfied, row_done, done, cur_len, position, tokens};
}

void beam_search_update(const at::Tensor& topk_log_probs, const at::Tensor& topk_indices, const BeamSearchState& state,
                        const BeamSearchRules& rules) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("imagetotext::beam_search_update", "")
                             .typed<void(const at::Tensor&, const at::Tensor&, at::TensorList, const at::Tensor&,
                                         const at::Tensor&, const at::Tensor&, int64_t, int64_t, int64_t, double)>();
  op.call(topk_log_probs, topk_indices, state.list(), rules.eos, rules.length_penalties, rules.max_length, rules.vocab,
          rules.prompt_length, rules.early_stopping, rules.length_penalty);
}

void greedy_advance(const at::Tensor& logits, const at::Tensor& tokens, const at::Tensor& generated,
                    const at::Tensor& step, const at::Tensor& position) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("imagetotext::greedy_advance", "")
                             .typed<void(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                         const at::Tensor&)>();
  op.call(logits, tokens, generated, step, position);
}

at::Tensor ban_repeated_ngrams(const at::Tensor& scores, const at::Tensor& sequences, const at::Tensor& length,
                               int64_t n) {
  static const auto op =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("imagetotext::ban_repeated_ngrams", "")
          .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, int64_t)>();
  return op.call(scores, sequences, length, n);
}

}  // namespace imagetotext::ops
