// The CPU side of the search ops: plain loops over the rows.
#include <torch/library.h>

#include <algorithm>
#include <limits>

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

}  // namespace
}  // namespace imagetotext::ops

TORCH_LIBRARY_IMPL(imagetotext, CPU, m) { m.impl("ban_repeated_ngrams", &imagetotext::ops::ban_repeated_ngrams_cpu); }
