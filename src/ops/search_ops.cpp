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

}  // namespace detail

at::Tensor ban_repeated_ngrams(const at::Tensor& scores, const at::Tensor& sequences, const at::Tensor& length,
                               int64_t n) {
  static const auto op =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("imagetotext::ban_repeated_ngrams", "")
          .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, int64_t)>();
  return op.call(scores, sequences, length, n);
}

}  // namespace imagetotext::ops
