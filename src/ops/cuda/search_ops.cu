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

constexpr int kGreedyWarps = 16;  // 512 threads: 1024 left 64 registers a thread, and the scan spilled
constexpr int kGreedyThreads = kGreedyWarps * cuda::kWarpSize;

// (value, index) of the candidate that comes first (greedy::comes_first) among a warp's lanes.
__device__ __forceinline__ void warp_argmax(float& value, int64_t& index) {
  for (int offset = cuda::kWarpSize / 2; offset > 0; offset >>= 1) {
    const float other = __shfl_xor_sync(cuda::kFullMask, value, offset);
    const int64_t other_index = __shfl_xor_sync(cuda::kFullMask, index, offset);
    if (greedy::comes_first(other, other_index, value, index)) value = other, index = other_index;
  }
}

// The candidate among a row's values that comes first, over every `stride`-th kPer-element piece from `first` on:
// the loads of kGreedyBatch pieces are issued before any is compared (the logits come from L2). `vector`: the row
// is 16-byte aligned, so a whole piece is one load.
template <typename T>
__device__ __forceinline__ void scan_row(const T* values, int vocab, int first, int stride, bool vector, float& best,
                                         int64_t& best_index) {
  constexpr int kPer = 16 / static_cast<int>(sizeof(T));
  constexpr int kGreedyBatch = 8;
  const int pieces = (vocab + kPer - 1) / kPer;
  for (int base = first; base < pieces; base += stride * kGreedyBatch) {
    uint4 raw[kGreedyBatch];
#pragma unroll
    for (int u = 0; u < kGreedyBatch; ++u) {
      const int p = base + u * stride, begin = p * kPer;
      if (p < pieces && vector && begin + kPer <= vocab) {
        raw[u] = *reinterpret_cast<const uint4*>(values + begin);  // a plain load: see launch.cuh
      } else {
        T* out = reinterpret_cast<T*>(&raw[u]);
#pragma unroll
        for (int e = 0; e < kPer; ++e) out[e] = p < pieces && begin + e < vocab ? values[begin + e] : T(0);
      }
    }
#pragma unroll
    for (int u = 0; u < kGreedyBatch; ++u) {
      const int p = base + u * stride;
      const T* piece = reinterpret_cast<const T*>(&raw[u]);
#pragma unroll
      for (int e = 0; e < kPer; ++e) {
        const int i = p * kPer + e;
        const float v = static_cast<float>(piece[e]);
        if (p < pieces && i < vocab && greedy::comes_first(v, i, best, best_index)) best = v, best_index = i;
      }
    }
  }
}

// One CTA: the rows in passes of up to kGreedyWarps, each row scanned by kGreedyWarps / rows warps; the group's
// first warp combines its warps' candidates, writes the token and its entry of `generated`. Thread 0 advances step
// and position last, after every thread has read step.
template <typename T>
__global__ void __launch_bounds__(kGreedyThreads)
greedy_advance_kernel(const T* logits, int64_t row_stride, int64_t batch, int64_t vocab, bool vector, int64_t* tokens,
                      int64_t* generated, int64_t capacity, int64_t* step, int64_t* position) {
  cuda::let_next_kernel_start();
  cuda::wait_for_previous_kernels(logits, tokens, generated, step, position);
  __shared__ float warp_value[kGreedyWarps];
  __shared__ int64_t warp_index[kGreedyWarps];
  const int warp = threadIdx.x / cuda::kWarpSize, lane = threadIdx.x % cuda::kWarpSize;
  const int64_t rows_per_pass = batch < kGreedyWarps ? batch : kGreedyWarps;
  const int warps_per_row = kGreedyWarps / static_cast<int>(rows_per_pass);
  const int group = warp / warps_per_row, member = warp % warps_per_row;
  const int64_t where = *step;
  for (int64_t first = 0; first < batch; first += rows_per_pass) {
    const int64_t row = first + group;
    const bool active = group < rows_per_pass && row < batch;
    float value = 0.0f;
    int64_t index = -1;
    if (active) {
      scan_row(logits + row * row_stride, static_cast<int>(vocab), member * cuda::kWarpSize + lane,
               warps_per_row * cuda::kWarpSize, vector, value, index);
    }
    warp_argmax(value, index);
    if (lane == 0) warp_value[warp] = value, warp_index[warp] = index;
    __syncthreads();
    if (active && member == 0 && lane == 0) {
      for (int w = warp + 1; w < warp + warps_per_row; ++w) {
        if (greedy::comes_first(warp_value[w], warp_index[w], value, index)) value = warp_value[w], index = warp_index[w];
      }
      tokens[row] = index;
      if (where >= 0 && where < capacity) generated[where * batch + row] = index;
    }
    __syncthreads();  // warp_value is rewritten by the next pass
  }
  if (threadIdx.x == 0) {
    *step = where + 1;
    *position += 1;
  }
}

void greedy_advance_cuda(const at::Tensor& logits, const at::Tensor& tokens, const at::Tensor& generated,
                         const at::Tensor& step, const at::Tensor& position) {
  const int64_t vocab = detail::check_greedy_advance(logits, tokens, generated, step, position);
  const c10::cuda::CUDAGuard guard(logits.device());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, logits.scalar_type(), "greedy_advance_cuda", [&] {
    const bool vector = cuda::is_aligned_16(logits.data_ptr()) && (logits.stride(0) * sizeof(scalar_t)) % 16 == 0;
    cuda::launch_overlapped(&greedy_advance_kernel<scalar_t>, dim3(1), dim3(kGreedyThreads), 0,
                            logits.data_ptr<scalar_t>(), logits.stride(0), logits.size(0), vocab, vector,
                            tokens.data_ptr<int64_t>(), generated.data_ptr<int64_t>(), generated.size(0),
                            step.data_ptr<int64_t>(), position.data_ptr<int64_t>());
  });
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
