// CUDA kernel of imagetotext::gemm_4bit: for float16/bfloat16 A up to 32 or 64 rows, the tensor-core GEMV
// (gemv_mma.cuh); for float32 A up to kMaxGemvRows rows, and for one or two rows of a small weight, the
// SIMT GEMV (gemv.cuh); otherwise, or when K is not a multiple of 32, dequantize_4bit to A's dtype +
// cuBLAS (at::linear).
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "../quantize.hpp"
#include "gemv.cuh"
#include "gemv_mma.cuh"
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
  // One thread writes them, at constant indices: indexing the kernel argument by threadIdx (also as the compiler
  // rewrote `if (threadIdx.x == code)`) copied the whole argument to the stack, local memory, in every thread.
  __device__ __forceinline__ void prepare() const {
    if (threadIdx.x == 0) {
#pragma unroll
      for (int code = 0; code < 16; ++code) table()[code] = codes.values[code];
    }
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

// The same chunks for the tensor-core GEMV: a 256-entry table maps a packed byte straight to its two code
// values as a 16-bit pair (high nibble, the even element, in the low half, as the mma wants the lower k),
// one copy per bank (entry e of lane l at word 32e + l), so a warp's 32 lookups never conflict. The pair
// is then scaled by the block's absmax with one packed multiply.
template <typename scalar_t>
struct Nf4Fp4MmaWeights {
  static constexpr int kK = 32;
  static constexpr int kSharedBytes = 256 * cuda::kWarpSize * sizeof(uint32_t);
  using Ops = cuda::Half2Ops<scalar_t>;
  const uint8_t* packed;
  const float* absmax;
  int log2_blocksize;
  cuda::CodeTable4bit codes;

  __device__ __forceinline__ void prepare(char* smem, float* scratch) const {
    uint16_t* values = reinterpret_cast<uint16_t*>(scratch);
    if (threadIdx.x == 0) {  // as in Nf4Fp4Weights::prepare: one thread, constant indices
#pragma unroll
      for (int code = 0; code < 16; ++code) values[code] = Ops::bits(codes.values[code]);
    }
    __syncthreads();
    uint4* table = reinterpret_cast<uint4*>(smem);  // 16-byte stores: four replicas of an entry at a time
    for (int i = threadIdx.x; i < 256 * cuda::kWarpSize / 4; i += blockDim.x) {
      const int byte = i / (cuda::kWarpSize / 4);
      const uint32_t pair = values[byte >> 4] | (static_cast<uint32_t>(values[byte & 15]) << 16);
      table[i] = make_uint4(pair, pair, pair, pair);
    }
    __syncthreads();
  }
  __device__ __forceinline__ uint4 load(int n, int chunks, int c) const {
    return __ldcs(reinterpret_cast<const uint4*>(packed) + static_cast<int64_t>(n) * chunks + c);
  }
  __device__ __forceinline__ float chunk_scale(int n, int K, int c) const {
    return __ldg(absmax + ((static_cast<int64_t>(n) * K + c * kK) >> log2_blocksize));
  }
  // The table entry of byte p (0..3) of `word` for this lane: byte * 128 + lane * 4 (one shift, one LOP3).
  __device__ __forceinline__ static uint32_t lookup(const char* smem, uint32_t word, int p, uint32_t lane_offset) {
    const uint32_t shifted = p == 0 ? word << 7 : word >> (8 * p - 7);
    return *reinterpret_cast<const uint32_t*>(smem + ((shifted & 0x7F80u) | lane_offset));
  }
  __device__ __forceinline__ void decode(const char* smem, uint4 raw, float scale, uint32_t (&lo)[kK / 4],
                                         uint32_t (&hi)[kK / 4]) const {
    const uint32_t scale2 = static_cast<uint32_t>(Ops::bits(scale)) * 0x10001u;
    const uint32_t lane_offset = (threadIdx.x % cuda::kWarpSize) * sizeof(uint32_t);
    const uint32_t words[4] = {raw.x, raw.y, raw.z, raw.w};
#pragma unroll
    for (int j = 0; j < kK / 4; ++j) {  // bytes 2j (elements 4j, 4j+1) and 2j+1 (4j+2, 4j+3)
      lo[j] = Ops::mul(lookup(smem, words[j / 2], 2 * (j % 2), lane_offset), scale2);
      hi[j] = Ops::mul(lookup(smem, words[j / 2], 2 * (j % 2) + 1, lane_offset), scale2);
    }
  }
  __device__ __forceinline__ float row_scale(int) const { return 1.0f; }
};

struct MakeNf4Fp4MmaWeights {
  const uint8_t* packed;
  const float* absmax;
  int log2_blocksize;
  cuda::CodeTable4bit codes;
  template <typename scalar_t>
  Nf4Fp4MmaWeights<scalar_t> make() const {
    return {packed, absmax, log2_blocksize, codes};
  }
};

at::Tensor gemm_4bit_cuda(const at::Tensor& A, const at::Tensor& packed, const at::Tensor& absmax, int64_t blocksize,
                          c10::string_view quant_type, c10::ArrayRef<int64_t> weight_shape,
                          const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& norm_weight,
                          double norm_eps, bool gated, const std::optional<at::Tensor>& residual,
                          const std::optional<at::Tensor>& norm_bias, bool gelu,
                          const std::optional<at::Tensor>& normed_out) {
  constexpr std::string_view op = "gemm_4bit";
  const GemmFusion fusion = detail::check_gemm_fusion(op, A, norm_weight, norm_eps, gated, residual, norm_bias, gelu,
                                                      normed_out);
  const detail::WeightShape shape = detail::check_gemm_4bit(detail::gemm_input_like(A, fusion), packed, absmax,
                                                            blocksize, quant_type, weight_shape, bias);
  const c10::cuda::CUDAGuard guard(A.device());
  const at::Tensor a = A.contiguous(), bytes = packed.contiguous(), scales = absmax.contiguous();
  const int64_t rows = cuda::leading_rows(a), N = shape.out_features, K = shape.in_features;
  const cuda::CodeTable4bit codes = cuda::code_table_4bit(quant::parse_quant_type(std::string(quant_type)));
  const Nf4Fp4Weights simt_weights{bytes.data_ptr<uint8_t>(), scales.data_ptr<float>(), cuda::log2_of(blocksize),
                                   codes};
  // Measured on the H100 (benchmarks/results/quant_gemm_h100-2026-11-22-mma.md): one or two rows of a small
  // weight run faster on the SIMT GEMV (it builds no 32 KB table: ~2 us less on the models' layers); the
  // tensor-core GEMV beats dequantize + cuBLAS up to 32 rows everywhere, and up to 64 from 8M weights on.
  const int64_t weight_count = N * K;
  const bool simt_first = rows <= 2 && rows * weight_count <= (int64_t{4} << 20);
  const int64_t mma_rows = weight_count >= (int64_t{8} << 20) ? 64 : 32;
  // The SIMT GEMV norms or gates one row as it loads it, the tensor-core GEMV stages the norms the SIMT GEMV does
  // not take (LayerNorm, a normed_out, several rows); elsewhere the input is composed, and the GEMVs run the
  // epilogue (gelu, residual).
  if (simt_first && (fusion.norm_weight || fusion.gated) &&
      cuda::gemv_applies(a, rows, K, Nf4Fp4Weights::kWeightsPerChunk, bytes.data_ptr(), fusion)) {
    at::Tensor out = detail::gemm_output(op, a, N, fusion);
    cuda::launch_gemv(a, rows, simt_weights, N, K, bias, fusion, out);
    return out;
  }
  const MakeNf4Fp4MmaWeights mma_weights{bytes.data_ptr<uint8_t>(), scales.data_ptr<float>(), cuda::log2_of(blocksize),
                                         codes};
  if (cuda::mma_norm_applies(a, rows, K, fusion) &&
      cuda::mma_gemv_applies(a, rows, mma_rows, N, K, Nf4Fp4MmaWeights<c10::Half>::kK, bytes.data_ptr())) {
    at::Tensor out = detail::gemm_output(op, a, N, fusion);
    cuda::launch_mma_gemv(a, rows, mma_weights, N, K, bias, fusion, out);
    return out;
  }
  const at::Tensor input = gemm_input(a, fusion).contiguous();
  const GemmFusion epilogue = detail::epilogue_of(fusion);
  if (!simt_first &&
      cuda::mma_gemv_applies(input, rows, mma_rows, N, K, Nf4Fp4MmaWeights<c10::Half>::kK, bytes.data_ptr())) {
    at::Tensor out = detail::gemm_output(op, input, N, fusion);
    cuda::launch_mma_gemv(input, rows, mma_weights, N, K, bias, epilogue, out);
    return out;
  }
  if (cuda::gemv_applies(input, rows, K, Nf4Fp4Weights::kWeightsPerChunk, bytes.data_ptr())) {
    at::Tensor out = detail::gemm_output(op, input, N, fusion);
    cuda::launch_gemv(input, rows, simt_weights, N, K, bias, epilogue, out);
    return out;
  }
  const at::Tensor out = detail::dequantize_4bit_then_linear(input, bytes, scales, blocksize, quant_type, shape, bias);
  return detail::finish_gemm(op, out, fusion);
}

}  // namespace
}  // namespace imagetotext::ops

TORCH_LIBRARY_IMPL(imagetotext, CUDA, m) { m.impl("gemm_4bit", &imagetotext::ops::gemm_4bit_cuda); }
