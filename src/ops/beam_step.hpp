// The rules of one beam-search step for one batch row, as transformers' _beam_search applies them (transformers
// 5.17, generation/utils.py: _get_top_k_continuations after its topk, _get_running_beams_for_next_iteration,
// _update_finished_beams, _check_early_stop_heuristic, _beam_search_has_unfinished_sequences): scalar code over a
// row's few candidates, shared by the CPU and CUDA kernels of beam_search_update (search_ops.hpp), which copy the
// sequences around it. Float32 throughout, each operation rounded where transformers' tensor op rounds it. At the
// end, greedy search's order of candidates (torch.argmax's), shared by the kernels of greedy_advance.
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define IMAGETOTEXT_SEARCH_RULE __host__ __device__ __forceinline__
#else
#define IMAGETOTEXT_SEARCH_RULE inline
#endif

namespace imagetotext::ops::beam {

inline constexpr float kUnreachable = -1.0e9f;  // transformers' -1.0e9: "never pick this beam" (exact in float32)

// generate()'s early_stopping: False, True, "never".
enum EarlyStopping : int64_t { heuristic = 0, when_enough_finished = 1, never = 2 };

// The search state (flat over batch * beams, row after row) and the step's inputs, as raw pointers.
struct Step {
  const float* topk_log_probs;  // [batch, keep]: torch.topk of a row's accumulated log-probs over beams * vocab
  const int64_t* topk_indices;  // [batch, keep]: beam * vocab + token
  const int64_t* eos;
  const float* length_penalties;  // [capacity + 1]: k ** length_penalty
  const int64_t* max_length;      // [1]
  int64_t n_eos, batch, beams, keep, vocab, capacity, prompt_length;
  int64_t early_stopping;
  bool positive_length_penalty;
  // Updated in place.
  int64_t* running_sequences;  // [batch * beams, capacity]
  float* running_scores;
  int64_t* parents;
  int64_t* sequences;  // the finished hypotheses [batch * beams, capacity], their scores, lengths, flags
  float* scores;
  int64_t* lengths;
  bool* finished;
  bool* heuristic_unsatisfied;  // [batch]
  bool* row_done;               // [batch]
  bool* done;                   // [1]
  int64_t* cur_len;             // [1]
  int64_t* position;            // [1]
  int64_t* tokens;              // [batch * beams]
};

// One row's decisions: arrays of `keep` continuations and `beams` entries, in the caller's memory.
struct RowPlan {
  int64_t* source;           // [keep]: flat index of the running sequence a continuation extends
  int64_t* token;            // [keep]
  bool* hit;                 // [keep]: the continuation meets a stopping criterion (EOS, max_length)
  float* running_log_prob;   // [keep]: its score as a running beam
  float* finished_score;     // [keep]: its score as a finished hypothesis
  int64_t* next;             // [beams]: the continuations that run on
  int64_t* kept;             // [beams]: the merged entries kept as results (< beams: an earlier one)
  float* old_scores;         // [beams]: the row's results before the step
  int64_t* old_lengths;
  bool* old_finished;
};

// Device values index arrays here: an inconsistent state is clamped into range, never read past an array.
IMAGETOTEXT_SEARCH_RULE int64_t clamped(int64_t v, int64_t low, int64_t high) {
  return v < low ? low : v > high ? high : v;
}

// torch.topk's order: larger first, NaN above every number, equal values by position. Here values tie only
// between -1e9 placeholders (continuations that hit a stop, unfilled results), where the choice changes no result
// (torch's CPU topk picks among them otherwise: test_search_ops.py compares everything but that choice).
IMAGETOTEXT_SEARCH_RULE bool ranks_above(float a, float b) {
  const bool a_nan = a != a, b_nan = b != b;
  return (a_nan && !b_nan) || a > b;
}

// The positions of the `count` largest of value(0 .. size - 1), in torch.topk's order.
template <class Value>
IMAGETOTEXT_SEARCH_RULE void top_positions(const Value& value, int64_t size, int64_t count, int64_t* out) {
  for (int64_t i = 0; i < count; ++i) {
    int64_t best = -1;
    for (int64_t j = 0; j < size; ++j) {
      bool taken = false;
      for (int64_t t = 0; t < i && !taken; ++t) taken = out[t] == j;
      if (!taken && (best < 0 || ranks_above(value(j), value(best)))) best = j;
    }
    out[i] = best;
  }
}

// The step's cur_len, and the one after it (unchanged once the whole search is done).
struct Lengths {
  int64_t cur, next;
};
IMAGETOTEXT_SEARCH_RULE Lengths step_lengths(const Step& s) {
  const int64_t cur = clamped(*s.cur_len, 1, s.capacity);
  return {cur, *s.done ? cur : clamped(cur + 1, 1, s.capacity)};
}

// Everything row `row` decides from its top-k continuations at length `cur` (the step's cur_len): the beams that
// run on and the results it keeps. Reads the state as it was before the step.
IMAGETOTEXT_SEARCH_RULE void plan_row(const Step& s, int64_t row, int64_t cur, const RowPlan& plan) {
  const int64_t n = s.beams, k = s.keep, first = row * n;
  const bool at_max_length = cur + 1 >= *s.max_length;
  for (int64_t j = 0; j < k; ++j) {
    const int64_t index = clamped(s.topk_indices[row * k + j], 0, n * s.vocab - 1);
    plan.source[j] = first + index / s.vocab;
    plan.token[j] = index % s.vocab;
    bool hit = at_max_length;
    for (int64_t e = 0; e < s.n_eos && !hit; ++e) hit = plan.token[j] == s.eos[e];
    plan.hit[j] = hit;
    const float log_prob = s.topk_log_probs[row * k + j];
    plan.running_log_prob[j] = hit ? log_prob + kUnreachable : log_prob;
  }
  top_positions([&](int64_t j) { return plan.running_log_prob[j]; }, k, n, plan.next);

  bool all_finished = true;
  for (int64_t i = 0; i < n; ++i) {
    plan.old_scores[i] = s.scores[first + i];
    plan.old_lengths[i] = s.lengths[first + i];
    plan.old_finished[i] = s.finished[first + i];
    all_finished = all_finished && plan.old_finished[i];
  }
  const float penalty = s.length_penalties[clamped(cur + 1 - s.prompt_length, 0, s.capacity)];
  for (int64_t j = 0; j < k; ++j) {
    float score = s.topk_log_probs[row * k + j] / penalty;  // (each += below is its own rounding, as in Python)
    if (s.early_stopping == when_enough_finished && all_finished) score += kUnreachable;
    if (!s.heuristic_unsatisfied[row]) score += kUnreachable;
    if (!(plan.hit[j] && j < n)) score += kUnreachable;  // only the top `beams` continuations may finish
    plan.finished_score[j] = score;
  }
  top_positions([&](int64_t m) { return m < n ? plan.old_scores[m] : plan.finished_score[m - n]; }, n + k, n,
                plan.kept);
}

// Token `column` of continuation j: its parent's running sequence (`old_running`: the row's beams before the step,
// `stride` apart) with the new token at `cur`.
IMAGETOTEXT_SEARCH_RULE int64_t continuation_token(const Step& s, const RowPlan& plan, int64_t row, int64_t j,
                                                   int64_t column, int64_t cur, const int64_t* old_running,
                                                   int64_t stride) {
  return column == cur ? plan.token[j] : old_running[(plan.source[j] - row * s.beams) * stride + column];
}

// Token `column` of the row's result i after the step: an earlier result (`old_results`, the row's results before
// the step, `stride` apart) or a continuation, as plan.kept says.
IMAGETOTEXT_SEARCH_RULE int64_t result_token(const Step& s, const RowPlan& plan, int64_t row, int64_t i,
                                             int64_t column, int64_t cur, const int64_t* old_running,
                                             const int64_t* old_results, int64_t stride) {
  const int64_t m = plan.kept[i];
  return m < s.beams ? old_results[m * stride + column]
                     : continuation_token(s, plan, row, m - s.beams, column, cur, old_running, stride);
}

// After the row's sequences are written: its running scores and parents, its results' scores, lengths and flags
// (unless the row was done before the step: `frozen`), then its stop rules at the new length `new_cur`.
IMAGETOTEXT_SEARCH_RULE void finish_row(const Step& s, int64_t row, int64_t cur, int64_t new_cur, bool frozen,
                                        const RowPlan& plan) {
  const int64_t n = s.beams, k = s.keep, first = row * n;
  for (int64_t i = 0; i < n; ++i) {
    s.running_scores[first + i] = plan.running_log_prob[plan.next[i]];
    s.parents[first + i] = plan.source[plan.next[i]];
  }
  if (!frozen) {
    for (int64_t i = 0; i < n; ++i) {
      const int64_t m = plan.kept[i];
      s.scores[first + i] = m < n ? plan.old_scores[m] : plan.finished_score[m - n];
      s.lengths[first + i] = m < n ? plan.old_lengths[m] : cur + 1;
      s.finished[first + i] = m < n ? plan.old_finished[m] : plan.hit[m - n] && m - n < n;
    }
  }
  // _check_early_stop_heuristic: can the best running beam still beat the worst finished one?
  const int64_t best_length = s.early_stopping == never && s.positive_length_penalty
                                  ? *s.max_length - s.prompt_length
                                  : new_cur - s.prompt_length;
  const float best_running = s.running_scores[first] / s.length_penalties[clamped(best_length, 0, s.capacity)];
  float lowest = s.scores[first];  // torch.min: NaN wins
  for (int64_t i = 1; i < n && lowest == lowest; ++i) {
    const float v = s.scores[first + i];
    if (v != v || v < lowest) lowest = v;
  }
  bool improvable = false, all_finished = true;
  for (int64_t i = 0; i < n; ++i) {
    improvable = improvable || best_running > (s.finished[first + i] ? lowest : kUnreachable);
    all_finished = all_finished && s.finished[first + i];
  }
  s.heuristic_unsatisfied[row] = s.heuristic_unsatisfied[row] && improvable;
  // _beam_search_has_unfinished_sequences, per row.
  bool all_hit = true;
  for (int64_t j = 0; j < k; ++j) all_hit = all_hit && plan.hit[j];
  const bool unfinished = s.heuristic_unsatisfied[row] && !all_hit &&
                          !(s.early_stopping == when_enough_finished && all_finished);
  s.row_done[row] = s.row_done[row] || !unfinished;
}

// After every row: the new length, and the search is done when every row is (tokens are the caller's copy).
IMAGETOTEXT_SEARCH_RULE void finish_step(const Step& s, const Lengths& lengths) {
  bool all_done = true;
  for (int64_t row = 0; row < s.batch; ++row) all_done = all_done && s.row_done[row];
  *s.done = all_done;
  *s.cur_len = lengths.next;
  *s.position = lengths.next - 1;
}

}  // namespace imagetotext::ops::beam

namespace imagetotext::ops::greedy {

// Whether logit a at index ia comes before logit b at ib in torch.argmax's order (ATen's greater_or_nan): NaN
// above every number, the lower index among equals. An index below 0 marks "no candidate" and never comes first.
IMAGETOTEXT_SEARCH_RULE bool comes_first(float a, int64_t ia, float b, int64_t ib) {
  if (ia < 0) return false;
  if (ib < 0) return true;
  if (a != a) return b == b || ia < ib;  // NaN (the comparison is false only for NaN)
  if (b != b) return false;
  return a == b ? ia < ib : a > b;
}

}  // namespace imagetotext::ops::greedy

#undef IMAGETOTEXT_SEARCH_RULE
