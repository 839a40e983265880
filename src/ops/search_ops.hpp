// Ops of the device-side generation search (torch.ops.imagetotext.*, text/beam_search.hpp): the per-step logits
// processing that ATen runs as a dozen small kernels, in one kernel on CUDA; on the CPU a plain loop.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>

namespace imagetotext::ops {

// transformers' NoRepeatNGramLogitsProcessor: scores [rows, vocab] float32 with, in each row r, -inf at every
// token t that would complete an n-gram already in sequences[r, 0 : length] (int64 [rows, capacity]; length:
// int64 [1] on the scores' device, the filled positions, read there so that a CUDA graph can record the step):
// t = sequences[r, s + n - 1] for every start s with s + n <= length whose first n - 1 tokens equal the last n - 1
// of the row. Returns a new tensor (scores is not written).
at::Tensor ban_repeated_ngrams(const at::Tensor& scores, const at::Tensor& sequences, const at::Tensor& length,
                               int64_t n);

namespace detail {
// Argument checks shared by the CPU and CUDA kernels; each throws c10::ValueError naming the argument.
void check_ban_repeated_ngrams(const at::Tensor& scores, const at::Tensor& sequences, const at::Tensor& length,
                               int64_t n);
}  // namespace detail

}  // namespace imagetotext::ops
