// CUDA kernel of imagetotext::gemm_int8_weight_only: for float16/bfloat16 A from 2 to kMaxMmaRows rows, the
// tensor-core GEMV (gemv_mma.cuh); for one row, and for float32 A up to kMaxGemvRows rows, the SIMT GEMV
// (gemv.cuh); otherwise, or when K is not a multiple of 16, the weight dequantized straight to A's dtype
// (the CPU kernel's weight, bit for bit) + cuBLAS (at::linear).
#include <ATen/ops/empty.h>
#include <ATen/ops/linear.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "../quantize.hpp"
#include "gemv.cuh"
#include "gemv_mma.cuh"
#include "int8_vectorwise.hpp"

namespace imagetotext::ops {
namespace {

// INT8 chunks: 16 codes. The dot product runs on the integer values; the row's SCB / 127 scales the sum once.
struct Int8RowWeights {
  static constexpr int kWeightsPerChunk = 16;
  const int8_t* cb;
  const float* scb;

  __device__ __forceinline__ void prepare() const {}
  __device__ __forceinline__ const uint4* row(int64_t n, int64_t chunks) const {
    return reinterpret_cast<const uint4*>(cb) + n * chunks;
  }
  __device__ __forceinline__ float chunk_scale(int64_t, int64_t, int64_t) const { return 1.0f; }
  // int8 -> float without the slow I2F: the byte + 128 placed in the mantissa of 2^23 (a byte permute), then
  // 2^23 + 128 subtracted; exact for every int8.
  __device__ __forceinline__ void decode(uint4 raw, float* w) const {
    const uint32_t words[4] = {raw.x, raw.y, raw.z, raw.w};
    constexpr uint32_t kTwoPow23Bits = 0x4B000000u;
    constexpr float kBias = 8388736.0f;  // 2^23 + 128
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const uint32_t offset_bytes = words[j] ^ 0x80808080u;  // each signed byte s becomes s + 128
#pragma unroll
      for (int b = 0; b < 4; ++b) {
        w[4 * j + b] = __uint_as_float(__byte_perm(offset_bytes, kTwoPow23Bits, 0x7440u + b)) - kBias;
      }
    }
  }
  __device__ __forceinline__ float row_scale(int64_t n) const { return __ldg(scb + n) * quant::kInt8DequantScale; }
};

// The same chunks for the tensor-core GEMV: the integers become exact 16-bit pairs (Half2Ops::int8_pairs);
// the row's SCB / 127 scales the float32 sum.
template <typename scalar_t>
struct Int8RowMmaWeights {
  static constexpr int kK = 16;
  static constexpr int kSharedBytes = 0;
  const int8_t* cb;
  const float* scb;

  __device__ __forceinline__ void prepare(char*, float*) const {}
  __device__ __forceinline__ uint4 load(int n, int chunks, int c) const {
    return __ldcs(reinterpret_cast<const uint4*>(cb) + static_cast<int64_t>(n) * chunks + c);
  }
  __device__ __forceinline__ float chunk_scale(int, int, int) const { return 1.0f; }
  __device__ __forceinline__ void decode(const char*, uint4 raw, float, uint32_t (&lo)[kK / 4],
                                         uint32_t (&hi)[kK / 4]) const {
    const uint32_t words[4] = {raw.x, raw.y, raw.z, raw.w};
#pragma unroll
    for (int j = 0; j < kK / 4; ++j) cuda::Half2Ops<scalar_t>::int8_pairs(words[j], lo[j], hi[j]);
  }
  __device__ __forceinline__ float row_scale(int n) const { return __ldg(scb + n) * quant::kInt8DequantScale; }
};

struct MakeInt8RowMmaWeights {
  const int8_t* cb;
  const float* scb;
  template <typename scalar_t>
  Int8RowMmaWeights<scalar_t> make() const {
    return {cb, scb};
  }
};

at::Tensor gemm_int8_weight_only_cuda(const at::Tensor& A, const at::Tensor& CB, const at::Tensor& SCB,
                                      const std::optional<at::Tensor>& bias,
                                      const std::optional<at::Tensor>& norm_weight, double norm_eps, bool gated,
                                      const std::optional<at::Tensor>& residual,
                                      const std::optional<at::Tensor>& norm_bias, bool gelu,
                                      const std::optional<at::Tensor>& normed_out) {
  constexpr std::string_view op = "gemm_int8_weight_only";
  const GemmFusion fusion = detail::check_gemm_fusion(op, A, norm_weight, norm_eps, gated, residual, norm_bias, gelu,
                                                      normed_out);
  const detail::WeightShape shape =
      detail::check_gemm_int8_weight_only(detail::gemm_input_like(A, fusion), CB, SCB, bias);
  const c10::cuda::CUDAGuard guard(A.device());
  const at::Tensor a = A.contiguous(), codes = CB.contiguous(), scales = SCB.contiguous();
  const int64_t rows = cuda::leading_rows(a), N = shape.out_features, K = shape.in_features;
  const Int8RowWeights simt_weights{codes.data_ptr<int8_t>(), scales.data_ptr<float>()};
  // One row with a fused input: the SIMT GEMV, which norms or gates as it loads.
  if ((fusion.norm_weight || fusion.gated) &&
      cuda::gemv_applies(a, rows, K, Int8RowWeights::kWeightsPerChunk, codes.data_ptr(), fusion)) {
    at::Tensor out = detail::gemm_output(op, a, N, fusion);
    cuda::launch_gemv(a, rows, simt_weights, N, K, bias, fusion, out);
    return out;
  }
  const MakeInt8RowMmaWeights mma_weights{codes.data_ptr<int8_t>(), scales.data_ptr<float>()};
  // A norm the SIMT GEMV does not take (LayerNorm, a normed_out, several rows): the tensor-core GEMV stages it.
  if (cuda::mma_norm_applies(a, rows, K, fusion) &&
      cuda::mma_gemv_applies(a, rows, cuda::kMaxMmaRows, N, K, Int8RowMmaWeights<c10::Half>::kK, codes.data_ptr())) {
    at::Tensor out = detail::gemm_output(op, a, N, fusion);
    cuda::launch_mma_gemv(a, rows, mma_weights, N, K, bias, fusion, out);
    return out;
  }
  // Otherwise the input is composed, and the GEMVs run the epilogue (gelu, residual). Measured on the H100
  // (benchmarks/results/quant_gemm_h100-2026-11-22-mma.md): one row runs faster on the SIMT GEMV (at the
  // memory floor there), 2 to 64 rows on the tensor-core GEMV.
  const at::Tensor input = gemm_input(a, fusion).contiguous();
  const GemmFusion epilogue = detail::epilogue_of(fusion);
  if (rows > 1 &&
      cuda::mma_gemv_applies(input, rows, cuda::kMaxMmaRows, N, K, Int8RowMmaWeights<c10::Half>::kK,
                             codes.data_ptr())) {
    at::Tensor out = detail::gemm_output(op, input, N, fusion);
    cuda::launch_mma_gemv(input, rows, mma_weights, N, K, bias, epilogue, out);
    return out;
  }
  if (cuda::gemv_applies(input, rows, K, Int8RowWeights::kWeightsPerChunk, codes.data_ptr())) {
    at::Tensor out = detail::gemm_output(op, input, N, fusion);
    cuda::launch_gemv(input, rows, simt_weights, N, K, bias, epilogue, out);
    return out;
  }
  const at::Tensor out = at::linear(input, cuda::int8_dequantize_rows(codes, scales, input.scalar_type()), bias);
  return detail::finish_gemm(op, out, fusion);
}

}  // namespace
}  // namespace imagetotext::ops

TORCH_LIBRARY_IMPL(imagetotext, CUDA, m) {
  m.impl("gemm_int8_weight_only", &imagetotext::ops::gemm_int8_weight_only_cuda);
}
