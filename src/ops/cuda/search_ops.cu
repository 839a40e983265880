// CUDA kernels of the search ops (src/ops/search_ops.hpp).
#include <ATen/Dispatch.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <cmath>

#include "../search_ops.hpp"
#include "blockwise.cuh"
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

constexpr int kGreedyThreads = 256;
constexpr int kGreedyWarps = kGreedyThreads / cuda::kWarpSize;
constexpr int kGreedyBatch = 2;        // 16-byte pieces a thread loads before it compares any
constexpr int64_t kGreedyChunk = 2048;  // logits a CTA of the first kernel scans: about one piece per thread

// (value, index) of the candidate that comes first (greedy::comes_first) among a warp's lanes.
__device__ __forceinline__ void warp_argmax(float& value, int64_t& index) {
  for (int offset = cuda::kWarpSize / 2; offset > 0; offset >>= 1) {
    const float other = __shfl_xor_sync(cuda::kFullMask, value, offset);
    const int64_t other_index = __shfl_xor_sync(cuda::kFullMask, index, offset);
    if (greedy::comes_first(other, other_index, value, index)) value = other, index = other_index;
  }
}

// The same among the CTA's threads: the result in every thread. Uses (and syncs around) two shared arrays.
__device__ __forceinline__ void block_argmax(float& value, int64_t& index) {
  __shared__ float warp_value[kGreedyWarps];
  __shared__ int64_t warp_index[kGreedyWarps];
  warp_argmax(value, index);
  const int warp = threadIdx.x / cuda::kWarpSize, lane = threadIdx.x % cuda::kWarpSize;
  if (lane == 0) warp_value[warp] = value, warp_index[warp] = index;
  __syncthreads();
  value = lane < kGreedyWarps ? warp_value[lane] : 0.0f;
  index = lane < kGreedyWarps ? warp_index[lane] : -1;
  warp_argmax(value, index);
  __syncthreads();  // the arrays may be reused
}

// greedy_advance, first kernel: CTA (chunk, row) reduces logits [chunk * kGreedyChunk, + kGreedyChunk) of its row
// to the candidate that comes first, in partial [row, chunk]. One piece of 16 bytes a thread, every load issued
// before any is compared (the logits come from L2): one CTA scanning a whole 49280-entry row took 16 us on the
// H100, bound by its compares. `vector`: the row is 16-byte aligned, so a whole piece is one load.
template <typename T>
__global__ void __launch_bounds__(kGreedyThreads)
greedy_partials_kernel(const T* logits, int64_t row_stride, int64_t vocab, bool vector, float* partial_values,
                       int64_t* partial_indices) {
  cuda::let_next_kernel_start();
  cuda::wait_for_previous_kernels(logits);
  constexpr int kPer = 16 / static_cast<int>(sizeof(T));
  const int64_t row = blockIdx.y, chunk = blockIdx.x;
  const int64_t begin = chunk * kGreedyChunk, end = min(vocab, begin + kGreedyChunk);
  const T* values = logits + row * row_stride;
  float best = 0.0f;
  int64_t best_index = -1;
  for (int64_t base = begin + threadIdx.x * kPer; base < end; base += kGreedyThreads * kPer * kGreedyBatch) {
    uint4 raw[kGreedyBatch];
#pragma unroll
    for (int u = 0; u < kGreedyBatch; ++u) {
      const int64_t first = base + u * kGreedyThreads * kPer;
      if (vector && first + kPer <= end) {
        raw[u] = *reinterpret_cast<const uint4*>(values + first);  // a plain load: see launch.cuh
      } else {
        T* out = reinterpret_cast<T*>(&raw[u]);
#pragma unroll
        for (int e = 0; e < kPer; ++e) out[e] = first + e < end ? values[first + e] : T(0);
      }
    }
#pragma unroll
    for (int u = 0; u < kGreedyBatch; ++u) {
      const int64_t first = base + u * kGreedyThreads * kPer;
      const T* piece = reinterpret_cast<const T*>(&raw[u]);
#pragma unroll
      for (int e = 0; e < kPer; ++e) {
        const float v = static_cast<float>(piece[e]);
        if (first + e < end && greedy::comes_first(v, first + e, best, best_index)) best = v, best_index = first + e;
      }
    }
  }
  block_argmax(best, best_index);
  if (threadIdx.x == 0) {
    partial_values[row * gridDim.x + chunk] = best;
    partial_indices[row * gridDim.x + chunk] = best_index;
  }
}

// greedy_advance, second kernel (one CTA): each row's partials reduced to its token, written to tokens and to
// generated[step]; then step and position advanced, after every thread has read step.
__global__ void __launch_bounds__(kGreedyThreads)
greedy_finish_kernel(const float* partial_values, const int64_t* partial_indices, int64_t chunks, int64_t batch,
                     int64_t* tokens, int64_t* generated, int64_t capacity, int64_t* step, int64_t* position) {
  cuda::let_next_kernel_start();
  cuda::wait_for_previous_kernels(partial_values, partial_indices, tokens, generated, step, position);
  const int64_t where = *step;
  for (int64_t row = 0; row < batch; ++row) {
    float best = 0.0f;
    int64_t best_index = -1;
    for (int64_t c = threadIdx.x; c < chunks; c += kGreedyThreads) {
      const float v = partial_values[row * chunks + c];
      const int64_t i = partial_indices[row * chunks + c];
      if (greedy::comes_first(v, i, best, best_index)) best = v, best_index = i;
    }
    block_argmax(best, best_index);
    if (threadIdx.x == 0) {
      tokens[row] = best_index;
      if (where >= 0 && where < capacity) generated[where * batch + row] = best_index;
    }
  }
  __syncthreads();  // every thread has read step
  if (threadIdx.x == 0) {
    *step = where + 1;
    *position += 1;
  }
}

void greedy_advance_cuda(const at::Tensor& logits, const at::Tensor& tokens, const at::Tensor& generated,
                         const at::Tensor& step, const at::Tensor& position) {
  const int64_t vocab = detail::check_greedy_advance(logits, tokens, generated, step, position);
  const c10::cuda::CUDAGuard guard(logits.device());
  const int64_t batch = logits.size(0), chunks = (vocab + kGreedyChunk - 1) / kGreedyChunk;
  TORCH_CHECK_VALUE(batch < 65536, "greedy_advance: batch above 65535");
  at::Tensor partial_values = at::empty({batch, chunks}, logits.options().dtype(at::kFloat));
  at::Tensor partial_indices = at::empty({batch, chunks}, logits.options().dtype(at::kLong));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, logits.scalar_type(), "greedy_advance_cuda", [&] {
    const bool vector = cuda::is_aligned_16(logits.data_ptr()) && (logits.stride(0) * sizeof(scalar_t)) % 16 == 0;
    cuda::launch_overlapped(&greedy_partials_kernel<scalar_t>,
                            dim3(static_cast<unsigned>(chunks), static_cast<unsigned>(batch)), dim3(kGreedyThreads), 0,
                            logits.data_ptr<scalar_t>(), logits.stride(0), vocab, vector,
                            partial_values.data_ptr<float>(), partial_indices.data_ptr<int64_t>());
  });
  cuda::launch_overlapped(&greedy_finish_kernel, dim3(1), dim3(kGreedyThreads), 0, partial_values.data_ptr<float>(),
                          partial_indices.data_ptr<int64_t>(), chunks, batch, tokens.data_ptr<int64_t>(),
                          generated.data_ptr<int64_t>(), generated.size(0), step.data_ptr<int64_t>(),
                          position.data_ptr<int64_t>());
}

constexpr int kBeamThreads = 256;

// The row plan's arrays in dynamic shared memory, 8-byte entries first.
struct PlanLayout {
  int64_t beams, keep;
  __host__ __device__ size_t bytes() const {
    return 8 * (2 * keep + 3 * beams) + 4 * (2 * keep + beams) + keep + beams;
  }
  __device__ beam::RowPlan at(unsigned char* base) const {
    int64_t* wide = reinterpret_cast<int64_t*>(base);
    float* narrow = reinterpret_cast<float*>(wide + 2 * keep + 3 * beams);
    bool* flags = reinterpret_cast<bool*>(narrow + 2 * keep + beams);
    return {wide, wide + keep, flags, narrow, narrow + keep, wide + 2 * keep, wide + 2 * keep + beams,
            narrow + 2 * keep, wide + 2 * keep + 2 * beams, flags + keep};
  }
};

// One CTA for the whole batch (a step's rows are few and cur_len, done are shared by all): per row, thread 0
// plans, every thread copies the sequences through `scratch` ([2 beams, capacity]: the row's running sequences
// and results before the step), thread 0 finishes the row.
__global__ void __launch_bounds__(kBeamThreads) beam_search_update_kernel(beam::Step s, PlanLayout layout,
                                                                          int64_t* scratch) {
  extern __shared__ __align__(8) unsigned char plan_memory[];
  cuda::let_next_kernel_start();
  cuda::wait_for_previous_kernels();  // (the state is read through `s`: plain loads, after the wait)
  const beam::RowPlan plan = layout.at(plan_memory);
  const int64_t n = s.beams, capacity = s.capacity;
  const beam::Lengths lengths = beam::step_lengths(s);
  const int64_t cur = lengths.cur, width = min(cur + 1, capacity);
  int64_t* old_running = scratch;
  int64_t* old_results = scratch + n * capacity;
  for (int64_t row = 0; row < s.batch; ++row) {
    const bool frozen = s.row_done[row];  // (read by every thread before thread 0 updates it below)
    const int64_t first = row * n;
    if (threadIdx.x == 0) beam::plan_row(s, row, cur, plan);
    for (int64_t i = threadIdx.x; i < n * width; i += kBeamThreads) {
      const int64_t beam = i / width, c = i % width;
      old_running[beam * capacity + c] = s.running_sequences[(first + beam) * capacity + c];
      old_results[beam * capacity + c] = s.sequences[(first + beam) * capacity + c];
    }
    __syncthreads();
    for (int64_t i = threadIdx.x; i < n * width; i += kBeamThreads) {
      const int64_t beam = i / width, c = i % width;
      s.running_sequences[(first + beam) * capacity + c] =
          beam::continuation_token(s, plan, row, plan.next[beam], c, cur, old_running, capacity);
      if (frozen) continue;
      s.sequences[(first + beam) * capacity + c] =
          beam::result_token(s, plan, row, beam, c, cur, old_running, old_results, capacity);
    }
    __syncthreads();
    if (threadIdx.x == 0) beam::finish_row(s, row, cur, lengths.next, frozen, plan);
    __syncthreads();  // (the next row's plan reuses the shared arrays and the scratch)
  }
  if (threadIdx.x == 0) beam::finish_step(s, lengths);
  for (int64_t i = threadIdx.x; i < s.batch * n; i += kBeamThreads) {
    s.tokens[i] = s.running_sequences[i * capacity + lengths.next - 1];
  }
}

void beam_search_update_cuda(const at::Tensor& topk_log_probs, const at::Tensor& topk_indices, at::TensorList state,
                             const at::Tensor& eos, const at::Tensor& length_penalties, const at::Tensor& max_length,
                             int64_t vocab, int64_t prompt_length, int64_t early_stopping, double length_penalty) {
  const beam::Step s =
      detail::check_beam_search_update(topk_log_probs, topk_indices, state, eos, length_penalties, max_length, vocab,
                                       prompt_length, early_stopping, length_penalty);
  const c10::cuda::CUDAGuard guard(topk_log_probs.device());
  const PlanLayout layout{s.beams, s.keep};
  TORCH_CHECK_VALUE(layout.bytes() <= 48 * 1024, "beam_search_update: ", s.beams, " beams keeping ", s.keep,
                    " continuations need more than 48 KiB of shared memory for their plan");
  at::Tensor scratch = at::empty({2 * s.beams, s.capacity}, state[0].options());
  cuda::launch_overlapped(&beam_search_update_kernel, dim3(1), dim3(kBeamThreads), layout.bytes(), s, layout,
                          scratch.data_ptr<int64_t>());
}

}  // namespace
}  // namespace imagetotext::ops

TORCH_LIBRARY_IMPL(imagetotext, CUDA, m) {
  m.impl("ban_repeated_ngrams", &imagetotext::ops::ban_repeated_ngrams_cuda);
  m.impl("beam_search_update", &imagetotext::ops::beam_search_update_cuda);
  m.impl("greedy_advance", &imagetotext::ops::greedy_advance_cuda);
}
