// CUDA kernel of imagetotext::gemm_4bit: the fused dequantize-GEMV (gemv.cuh) for up to kMaxGemvRows rows
// of A, dequantize_4bit to A's dtype + cuBLAS (at::linear) above, or when K is not a multiple of 32.
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "../quantize.hpp"
#include "gemv.cuh"
#include "imagetotext/quant/quantize.hpp"

namespace imagetotext::ops {
namespace {

// NF4/FP4 chunks: 16 bytes = 32 codes, high nibble first. With K % 32 == 0 a chunk starts at a flat
// element index that is a multiple of 32, and blocksize >= 32 is a power of two, so the chunk lies in one
// quantization block: one absmax per chunk, even where blocks straddle weight rows.
struct Nf4Fp4Weights {
  static constexpr int kWeightsPerChunk = 32;
  const uint8_t* packed;
  const float* absmax;
  int log2_blocksize;
  cuda::CodeTable4bit codes;

  __device__ __forceinline__ float* table() const {
    __shared__ float shared_table[16];
    return shared_table;
  }
  // The 16 values in shared memory: a warp's lookups hit at most 16 distinct words in 16 banks, no conflicts.
  __device__ __forceinline__ void prepare() const {
    if (threadIdx.x < 16) table()[threadIdx.x] = codes.values[threadIdx.x];
    __syncthreads();
  }
  __device__ __forceinline__ const uint4* row(int64_t n, int64_t chunks) const {
    return reinterpret_cast<const uint4*>(packed) + n * chunks;
  }
  __device__ __forceinline__ float chunk_scale(int64_t n, int64_t K, int64_t c) const {
    return __ldg(absmax + ((n * K + c * kWeightsPerChunk) >> log2_blocksize));
  }
  __device__ __forceinline__ void decode(uint4 raw, float* w) const {
    const float* values = table();
    const uint32_t words[4] = {raw.x, raw.y, raw.z, raw.w};
#pragma unroll
    for (int j = 0; j < 4; ++j) {
#pragma unroll
      for (int b = 0; b < 4; ++b) {  // byte 4j+b (little-endian) holds elements 8j+2b (high) and 8j+2b+1 (low)
        const uint32_t byte = (words[j] >> (8 * b)) & 0xFFu;
        w[8 * j + 2 * b] = values[byte >> 4];
        w[8 * j + 2 * b + 1] = values[byte & 0xFu];
      }
    }
  }
  __device__ __forceinline__ float row_scale(int64_t) const { return 1.0f; }
};

at::Tensor gemm_4bit_cuda(const at::Tensor& A, const at::Tensor& packed, const at::Tensor& absmax, int64_t blocksize,
                          c10::string_view quant_type, c10::ArrayRef<int64_t> weight_shape,
                          const std::optional<at::Tensor>& bias) {
  const detail::WeightShape shape = detail::check_gemm_4bit(A, packed, absmax, blocksize, quant_type, weight_shape, bias);
  const c10::cuda::CUDAGuard guard(A.device());
  const at::Tensor input = A.contiguous(), bytes = packed.contiguous(), scales = absmax.contiguous();
  const int64_t rows = cuda::leading_rows(input), N = shape.out_features, K = shape.in_features;
  if (!cuda::gemv_applies(rows, K, Nf4Fp4Weights::kWeightsPerChunk, bytes.data_ptr(), input.data_ptr())) {
    return detail::dequantize_4bit_then_linear(input, bytes, scales, blocksize, quant_type, shape, bias);
  }
  at::Tensor out = at::empty(detail::gemm_output_shape(input, N), input.options());
  const Nf4Fp4Weights weights{bytes.data_ptr<uint8_t>(), scales.data_ptr<float>(), cuda::log2_of(blocksize),
                              cuda::code_table_4bit(quant::parse_quant_type(std::string(quant_type)))};
  cuda::launch_gemv(input, rows, weights, N, K, bias, out);
  return out;
}

}  // namespace
}  // namespace imagetotext::ops

TORCH_LIBRARY_IMPL(imagetotext, CUDA, m) { m.impl("gemm_4bit", &imagetotext::ops::gemm_4bit_cuda); }
