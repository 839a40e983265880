// CUDA kernel of imagetotext::gemm_dense:
// - one row of A (a decode step of one sequence): the SIMT GEMV of the quantized formats (gemv.cuh) with the
//   weight read as it is stored, the bias added in float32 before its one rounding. At the decoders' shapes
//   cuBLAS takes 3.6-6.5 us a call on the H100 at any M up to 16, the GEMV 2.3-5.0 at M = 1; at M = 2 they
//   tie and from M = 3 on the GEMV loses (its float32 FMAs grow with M):
//   benchmarks/results/quant_gemm_h100-2026-11-23-dense.md.
// - 2 to kMaxDenseMmaRows rows of float16/bfloat16 A (beams, small batches): the tensor-core GEMV of the
//   quantized formats (gemv_mma.cuh) with the stored weight as its pairs, the bias, gelu and a residual in its
//   epilogue (and a LayerNorm input staged, also for one row): one kernel where cuBLAS and a bias add were two
//   (cuBLAS with the bias in its epilogue had made no measurable difference to Florence-2's 3-beam decode step,
//   0.99 ms a token either way).
// - otherwise, below kEpilogueRows: the CPU's composition (cuBLAS, then the bias).
// - kEpilogueRows rows and more (prefill, vision towers): cuBLAS with the bias in its epilogue (at::linear,
//   as transformers' F.linear), which spares a pass over the whole output: SmolVLM's vision tower spent 365
//   bias adds, 3.9 ms of GPU time, on a 17-tile caption (benchmarks/results/smolvlm-profile-h100-2026-11-23-*).
#include <ATen/Dispatch.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/linear.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "../quantize.hpp"
#include "gemv.cuh"
#include "gemv_mma.cuh"

namespace imagetotext::ops {
namespace {

// Rows of A up to which the GEMV runs; above, cuBLAS.
constexpr int64_t kMaxDenseGemvRows = 1;
// Rows of A up to which the tensor-core GEMV runs (from 2).
constexpr int64_t kMaxDenseMmaRows = 8;
// Rows of A from which cuBLAS adds the bias in its epilogue.
constexpr int64_t kEpilogueRows = 64;

// A dense weight row in 16-byte chunks of the weight's own dtype (A's dtype), widened to float.
template <typename scalar_t>
struct DenseRowWeights {
  static constexpr int kWeightsPerChunk = cuda::kPerChunk<scalar_t>;
  const scalar_t* weight;

  __device__ __forceinline__ void prepare() const {}
  __device__ __forceinline__ const uint4* row(int64_t n, int64_t chunks) const {
    return reinterpret_cast<const uint4*>(weight) + n * chunks;
  }
  __device__ __forceinline__ float chunk_scale(int64_t, int64_t, int64_t) const { return 1.0f; }
  __device__ __forceinline__ void decode(uint4 raw, float* w) const {
    const scalar_t* values = reinterpret_cast<const scalar_t*>(&raw);
#pragma unroll
    for (int i = 0; i < kWeightsPerChunk; ++i) w[i] = static_cast<float>(values[i]);
  }
  __device__ __forceinline__ float row_scale(int64_t) const { return 1.0f; }
};

// The same rows for the tensor-core GEMV: a 16-byte chunk is 8 values, already the 16-bit pairs the mma takes
// (elements 4j, 4j+1 in word 2j, 4j+2, 4j+3 in word 2j+1).
template <typename scalar_t>
struct DenseMmaWeights {
  static constexpr int kK = 8;
  static constexpr int kSharedBytes = 0;
  const scalar_t* weight;

  __device__ __forceinline__ void prepare(char*, float*) const {}
  __device__ __forceinline__ uint4 load(int n, int chunks, int c) const {
    return __ldcs(reinterpret_cast<const uint4*>(weight) + static_cast<int64_t>(n) * chunks + c);
  }
  __device__ __forceinline__ float chunk_scale(int, int, int) const { return 1.0f; }
  __device__ __forceinline__ void decode(const char*, uint4 raw, float, uint32_t (&lo)[kK / 4],
                                         uint32_t (&hi)[kK / 4]) const {
    lo[0] = raw.x;
    hi[0] = raw.y;
    lo[1] = raw.z;
    hi[1] = raw.w;
  }
  __device__ __forceinline__ float row_scale(int) const { return 1.0f; }
};

struct MakeDenseMmaWeights {
  const void* weight;
  template <typename scalar_t>
  DenseMmaWeights<scalar_t> make() const {
    return {static_cast<const scalar_t*>(weight)};
  }
};

at::Tensor gemm_dense_cuda(const at::Tensor& A, const at::Tensor& weight_in, const std::optional<at::Tensor>& bias,
                           const std::optional<at::Tensor>& norm_weight, double norm_eps, bool gated,
                           const std::optional<at::Tensor>& residual,
                           const std::optional<at::Tensor>& norm_bias, bool gelu,
                           const std::optional<at::Tensor>& normed_out) {
  constexpr std::string_view op = "gemm_dense";
  const GemmFusion fusion = detail::check_gemm_fusion(op, A, norm_weight, norm_eps, gated, residual, norm_bias, gelu,
                                                      normed_out);
  const detail::WeightShape shape = detail::check_gemm_dense(detail::gemm_input_like(A, fusion), weight_in, bias);
  const c10::cuda::CUDAGuard guard(A.device());
  const at::Tensor a = A.contiguous(), weight = weight_in.contiguous();
  const int64_t rows = cuda::leading_rows(a), N = shape.out_features, K = shape.in_features;
  const int weights_per_chunk = 16 / static_cast<int>(a.element_size());
  // The SIMT GEMV on `input` with `gemv_fusion`; false where it does not apply.
  auto simt_gemv = [&](const at::Tensor& input, const GemmFusion& gemv_fusion, at::Tensor& out) {
    if (rows > kMaxDenseGemvRows ||
        !cuda::gemv_applies(input, rows, K, weights_per_chunk, weight.data_ptr(), gemv_fusion)) {
      return false;
    }
    out = detail::gemm_output(op, input, N, gemv_fusion);
    if (rows == 0 || N == 0) return true;
    const at::Tensor bias_values = bias ? bias->contiguous() : at::Tensor();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "gemm_dense_cuda", [&] {
      static_assert(kMaxDenseGemvRows == 1, "launch the row tiles of launch_gemv for more rows");
      cuda::launch_gemv_tile<DenseRowWeights<scalar_t>, scalar_t, 1>(
          input, rows, DenseRowWeights<scalar_t>{weight.data_ptr<scalar_t>()}, N, K,
          bias ? bias_values.data_ptr<scalar_t>() : nullptr, gemv_fusion, out);
    });
    return true;
  };
  if (at::Tensor out; simt_gemv(a, fusion, out)) return out;
  // A norm the SIMT GEMV does not take (LayerNorm, a normed_out, several rows): the tensor-core GEMV stages it.
  const MakeDenseMmaWeights mma_weights{weight.data_ptr()};
  if (cuda::mma_norm_applies(a, rows, K, fusion) &&
      cuda::mma_gemv_applies(a, rows, kMaxDenseMmaRows, N, K, DenseMmaWeights<c10::Half>::kK, weight.data_ptr())) {
    at::Tensor out = detail::gemm_output(op, a, N, fusion);
    cuda::launch_mma_gemv(a, rows, mma_weights, N, K, bias, fusion, out);
    return out;
  }
  const at::Tensor input = gemm_input(a, fusion).contiguous();
  // An input the GEMV cannot stage (a gated row wider than kStageChunks chunks a thread), composed: the same
  // GEMV as the composition's, so the same sums (cuBLAS here summed in another order).
  if (at::Tensor out; simt_gemv(input, detail::epilogue_of(fusion), out)) return out;
  if (rows >= 2 && rows <= kMaxDenseMmaRows &&
      cuda::mma_gemv_applies(input, rows, kMaxDenseMmaRows, N, K, DenseMmaWeights<c10::Half>::kK, weight.data_ptr())) {
    at::Tensor out = detail::gemm_output(op, input, N, fusion);
    cuda::launch_mma_gemv(input, rows, mma_weights, N, K, bias, detail::epilogue_of(fusion), out);
    return out;
  }
  const at::Tensor out =
      rows >= kEpilogueRows ? at::linear(input, weight, bias) : detail::matmul_then_bias(input, weight, bias);
  return detail::finish_gemm(op, out, fusion);
}

}  // namespace
}  // namespace imagetotext::ops

TORCH_LIBRARY_IMPL(imagetotext, CUDA, m) { m.impl("gemm_dense", &imagetotext::ops::gemm_dense_cuda); }
