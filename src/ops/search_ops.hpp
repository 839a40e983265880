// Ops of the device-side generation search (torch.ops.imagetotext.*, text/beam_search.hpp): the per-step logits
// processing and the beam bookkeeping that ATen runs as dozens of small kernels, in one kernel each on CUDA; on the
// CPU plain loops.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <vector>

#include "beam_step.hpp"

namespace imagetotext::ops {

// transformers' NoRepeatNGramLogitsProcessor: scores [rows, vocab] float32 with, in each row r, -inf at every
// token t that would complete an n-gram already in sequences[r, 0 : length] (int64 [rows, capacity]; length:
// int64 [1] on the scores' device, the filled positions, read there so that a CUDA graph can record the step):
// t = sequences[r, s + n - 1] for every start s with s + n <= length whose first n - 1 tokens equal the last n - 1
// of the row. Returns a new tensor (scores is not written).
at::Tensor ban_repeated_ngrams(const at::Tensor& scores, const at::Tensor& sequences, const at::Tensor& length,
                               int64_t n);

// The state a beam search keeps on its device (text::DeviceSearch), n = batch * beams rows, row after row.
// As the op's `state` list, in this order.
struct BeamSearchState {
  at::Tensor running_sequences;      // int64 [n, capacity]
  at::Tensor running_scores;         // float32 [n]
  at::Tensor parents;                // int64 [n]: the running sequence each one continues (set by the step)
  at::Tensor sequences;              // int64 [n, capacity]: the finished hypotheses
  at::Tensor scores;                 // float32 [n]
  at::Tensor lengths;                // int64 [n]
  at::Tensor finished;               // bool [n]
  at::Tensor heuristic_unsatisfied;  // bool [batch]
  at::Tensor row_done;               // bool [batch]
  at::Tensor done;                   // bool [1] (may be row_done itself for a batch of one)
  at::Tensor cur_len;                // int64 [1]
  at::Tensor position;               // int64 [1]: cur_len - 1 after the step
  at::Tensor tokens;                 // int64 [n, 1]: the running sequences' last tokens after the step

  std::vector<at::Tensor> list() const;
};

// The constants of a beam search.
struct BeamSearchRules {
  at::Tensor eos;               // int64 [n_eos]
  at::Tensor length_penalties;  // float32 [capacity + 1]: k ** length_penalty
  at::Tensor max_length;        // int64 [1]
  int64_t vocab = 0;
  int64_t prompt_length = 0;
  int64_t early_stopping = 0;  // 0: False (the heuristic), 1: True, 2: "never" (beam_step.hpp)
  double length_penalty = 1.0;
};

// One step of transformers' beam search after its topk (beam_step.hpp has the rules): from each row's top
// continuations (topk_log_probs float32 and topk_indices int64 [batch, keep], torch.topk over the row's
// beams * vocab accumulated log-probs) the running beams, the finished hypotheses, the stop flags, cur_len and
// the next tokens, all updated in place, nothing read back to the host. A row already done keeps its results.
// One kernel on CUDA, where ATen's composition of the same step took about seventy.
void beam_search_update(const at::Tensor& topk_log_probs, const at::Tensor& topk_indices, const BeamSearchState& state,
                        const BeamSearchRules& rules);

// One step of greedy decoding after the logits, in place: tokens [batch, 1] = each row's argmax of logits [batch,
// vocab] (torch.argmax: the first maximum, NaN above everything), written to generated [capacity, batch] at row
// step[0] (int64 [1]; a step past capacity writes nothing), then step and position (int64 [1]) advanced by one.
// On CUDA two kernels (a CTA per 2048 logits of a row, then one CTA for the rest) where ATen ran six (argmax, a
// copy, index_copy_ and two add_); nothing is read back to the host.
void greedy_advance(const at::Tensor& logits, const at::Tensor& tokens, const at::Tensor& generated,
                    const at::Tensor& step, const at::Tensor& position);

namespace detail {
// Argument checks shared by the CPU and CUDA kernels; each throws c10::ValueError naming the argument.
void check_ban_repeated_ngrams(const at::Tensor& scores, const at::Tensor& sequences, const at::Tensor& length,
                               int64_t n);
// The op's arguments as beam_step.hpp's raw view (the CPU and CUDA kernels' common preamble).
beam::Step check_beam_search_update(const at::Tensor& topk_log_probs, const at::Tensor& topk_indices,
                                    at::TensorList state, const at::Tensor& eos, const at::Tensor& length_penalties,
                                    const at::Tensor& max_length, int64_t vocab, int64_t prompt_length,
                                    int64_t early_stopping, double length_penalty);
// The checks of greedy_advance; returns vocab.
int64_t check_greedy_advance(const at::Tensor& logits, const at::Tensor& tokens, const at::Tensor& generated,
                             const at::Tensor& step, const at::Tensor& position);
}  // namespace detail

}  // namespace imagetotext::ops
