// The CPU side of the search ops: plain loops over the rows.
#include <ATen/Dispatch.h>
#include <torch/library.h>

#include <algorithm>
#include <limits>
#include <memory>
#include <vector>

#include "../search_ops.hpp"

namespace imagetotext::ops {
namespace {

at::Tensor ban_repeated_ngrams_cpu(const at::Tensor& scores, const at::Tensor& sequences_in, const at::Tensor& length,
                                   int64_t n) {
  detail::check_ban_repeated_ngrams(scores, sequences_in, length, n);
  at::Tensor out = scores.contiguous().clone();
  const at::Tensor sequences = sequences_in.contiguous();
  const int64_t rows = out.size(0), vocab = out.size(1), capacity = sequences.size(1);
  const int64_t filled = std::min(length.item<int64_t>(), capacity);
  float* values = out.data_ptr<float>();
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t* tokens = sequences.data_ptr<int64_t>() + r * capacity;
    const int64_t* last = tokens + filled - (n - 1);  // the row's last n - 1 tokens
    for (int64_t s = 0; s + n <= filled; ++s) {
      if (!std::equal(tokens + s, tokens + s + n - 1, last)) continue;
      const int64_t banned = tokens[s + n - 1];
      if (banned >= 0 && banned < vocab) values[r * vocab + banned] = -std::numeric_limits<float>::infinity();
    }
  }
  return out;
}

void greedy_advance_cpu(const at::Tensor& logits, const at::Tensor& tokens, const at::Tensor& generated,
                        const at::Tensor& step, const at::Tensor& position) {
  const int64_t vocab = detail::check_greedy_advance(logits, tokens, generated, step, position);
  const int64_t batch = logits.size(0), capacity = generated.size(0), where = step.data_ptr<int64_t>()[0];
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, logits.scalar_type(), "greedy_advance_cpu", [&] {
    for (int64_t b = 0; b < batch; ++b) {
      const scalar_t* row = logits.data_ptr<scalar_t>() + b * logits.stride(0);
      float best = 0.0f;
      int64_t best_index = -1;
      for (int64_t i = 0; i < vocab; ++i) {
        const float value = static_cast<float>(row[i]);
        if (greedy::comes_first(value, i, best, best_index)) best = value, best_index = i;
      }
      tokens.data_ptr<int64_t>()[b] = best_index;
      if (where >= 0 && where < capacity) generated.data_ptr<int64_t>()[where * batch + b] = best_index;
    }
  });
  step.data_ptr<int64_t>()[0] = where + 1;
  position.data_ptr<int64_t>()[0] += 1;
}

void beam_search_update_cpu(const at::Tensor& topk_log_probs, const at::Tensor& topk_indices, at::TensorList state,
                            const at::Tensor& eos, const at::Tensor& length_penalties, const at::Tensor& max_length,
                            int64_t vocab, int64_t prompt_length, int64_t early_stopping, double length_penalty) {
  const beam::Step s =
      detail::check_beam_search_update(topk_log_probs, topk_indices, state, eos, length_penalties, max_length, vocab,
                                       prompt_length, early_stopping, length_penalty);
  const int64_t n = s.beams, k = s.keep, capacity = s.capacity;
  std::vector<int64_t> source(k), token(k), next(n), kept(n), old_lengths(n);
  std::vector<float> running_log_prob(k), finished_score(k), old_scores(n);
  std::unique_ptr<bool[]> hit(new bool[k]), old_finished(new bool[n]);
  const beam::RowPlan plan{source.data(),  token.data(),      hit.get(),        running_log_prob.data(),
                           finished_score.data(), next.data(), kept.data(),     old_scores.data(),
                           old_lengths.data(),    old_finished.get()};
  // The row's running sequences and results before the step, up to the step's column.
  std::vector<int64_t> old_running(n * capacity), old_results(n * capacity);
  const beam::Lengths lengths = beam::step_lengths(s);
  const int64_t cur = lengths.cur, width = std::min(cur + 1, capacity);
  for (int64_t row = 0; row < s.batch; ++row) {
    const bool frozen = s.row_done[row];
    const int64_t first = row * n;
    beam::plan_row(s, row, cur, plan);
    for (int64_t i = 0; i < n; ++i) {
      std::copy_n(s.running_sequences + (first + i) * capacity, width, old_running.data() + i * capacity);
      std::copy_n(s.sequences + (first + i) * capacity, width, old_results.data() + i * capacity);
    }
    for (int64_t i = 0; i < n; ++i) {
      int64_t* running = s.running_sequences + (first + i) * capacity;
      for (int64_t c = 0; c < width; ++c) {
        running[c] = beam::continuation_token(s, plan, row, next[i], c, cur, old_running.data(), capacity);
      }
      if (frozen) continue;
      int64_t* result = s.sequences + (first + i) * capacity;
      for (int64_t c = 0; c < width; ++c) {
        result[c] = beam::result_token(s, plan, row, i, c, cur, old_running.data(), old_results.data(), capacity);
      }
    }
    beam::finish_row(s, row, cur, lengths.next, frozen, plan);
  }
  beam::finish_step(s, lengths);
  for (int64_t i = 0; i < s.batch * n; ++i) s.tokens[i] = s.running_sequences[i * capacity + lengths.next - 1];
}

}  // namespace
}  // namespace imagetotext::ops

TORCH_LIBRARY_IMPL(imagetotext, CPU, m) {
  m.impl("ban_repeated_ngrams", &imagetotext::ops::ban_repeated_ngrams_cpu);
  m.impl("beam_search_update", &imagetotext::ops::beam_search_update_cpu);
  m.impl("greedy_advance", &imagetotext::ops::greedy_advance_cpu);
}
