// CUDA kernels of the search ops (src/ops/search_ops.hpp).
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <cmath>

#include "../search_ops.hpp"
#include "launch.cuh"

namespace imagetotext::ops {
namespace {

constexpr int kBanThreads = 256;
constexpr int64_t kBanChunk = 4096;  // vocabulary entries a CTA copies

// CTA (chunk, row): copies its chunk of the row, then bans, among the tokens inside its chunk, those that complete
// a repeated n-gram (every start of the row is scanned by every chunk's CTA: at most `capacity` short compares).
__global__ void __launch_bounds__(kBanThreads)
ban_repeated_ngrams_kernel(const float* scores, float* __restrict__ out, const int64_t* sequences,
                           const int64_t* length, int64_t vocab, int64_t capacity, int n) {
  cuda::let_next_kernel_start();
  cuda::wait_for_previous_kernels(scores, sequences, length);
  const int64_t row = blockIdx.y, begin = blockIdx.x * kBanChunk, end = min(vocab, begin + kBanChunk);
  for (int64_t v = begin + threadIdx.x; v < end; v += kBanThreads) out[row * vocab + v] = scores[row * vocab + v];
  __syncthreads();  // a ban may land on an entry another thread copied
  const int64_t filled = min(*length, capacity);
  const int64_t* tokens = sequences + row * capacity;
  const int64_t* last = tokens + filled - (n - 1);
  for (int64_t s = threadIdx.x; s + n <= filled; s += kBanThreads) {
    bool repeated = true;
    for (int i = 0; i + 1 < n && repeated; ++i) repeated = tokens[s + i] == last[i];
    const int64_t banned = tokens[s + n - 1];
    if (repeated && banned >= begin && banned < end) out[row * vocab + banned] = -INFINITY;
  }
}

at::Tensor ban_repeated_ngrams_cuda(const at::Tensor& scores_in, const at::Tensor& sequences_in,
                                    const at::Tensor& length, int64_t n) {
  detail::check_ban_repeated_ngrams(scores_in, sequences_in, length, n);
  const c10::cuda::CUDAGuard guard(scores_in.device());
  const at::Tensor scores = scores_in.contiguous(), sequences = sequences_in.contiguous();
  at::Tensor out = at::empty(scores.sizes(), scores.options());
  const int64_t rows = scores.size(0), vocab = scores.size(1);
  TORCH_CHECK_VALUE(rows < 65536, "ban_repeated_ngrams: rows above 65535");
  if (rows == 0 || vocab == 0) return out;
  const dim3 grid(static_cast<unsigned>((vocab + kBanChunk - 1) / kBanChunk), static_cast<unsigned>(rows));
  cuda::launch_overlapped(&ban_repeated_ngrams_kernel, grid, dim3(kBanThreads), 0, scores.data_ptr<float>(),
                          out.data_ptr<float>(), sequences.data_ptr<int64_t>(), length.data_ptr<int64_t>(), vocab,
                          sequences.size(1), static_cast<int>(n));
  return out;
}

}  // namespace
}  // namespace imagetotext::ops

TORCH_LIBRARY_IMPL(imagetotext, CUDA, m) { m.impl("ban_repeated_ngrams", &imagetotext::ops::ban_repeated_ngrams_cuda); }
