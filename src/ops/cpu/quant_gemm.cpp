// CPU kernels of imagetotext::gemm_4bit, gemm_int8_weight_only and gemm_dense (the CUDA ones are in
// src/ops/cuda/gemm_4bit.cu, gemm_int8_weight_only.cu and gemm_dense.cu).
//
// Up to kFusedMaxRows rows of A (decoding, captions one token at a time): fused kernels that keep W
// quantized. Each output row n of W is decoded block by block into registers and multiplied against every
// row of A while it is there, so the weight is read once per call and never written out dense. Parallel
// over output rows. More rows: the weight dequantized to A's dtype, then at::linear (BLAS), which wins once
// the decode can no longer be shared by enough rows (benchmarks/results/quant-cpu-*.txt).
//
// The SIMD width is chosen at run time (simd.hpp): AVX-512, AVX2+FMA or portable scalar code.
//
// Numerics of the fused kernels: each weight is float32(table[code] * absmax[block]) (4-bit; exactly
// dequantize_4bit's float32 value) or CB * (SCB / 127) (int8), products accumulated in float32 in an order
// that differs from at::matmul's, the bias added in float32, one rounding to A's dtype.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/linear.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <vector>

#include "../quantize.hpp"
#include "imagetotext/quant/quantize.hpp"
#include "simd.hpp"

namespace imagetotext::ops {
namespace {

using cpu::SimdLevel;
using cpu::simd_level;

// Rows of A up to which the fused kernels run; above, dequantize + at::linear. At 16 rows the fused
// kernels still beat dequantize + matmul at every measured shape (benchmarks/results/quant-cpu-*.txt).
constexpr int64_t kFusedMaxRows = 16;

// Rows of A handled together per output row: their accumulators (two per row, to hide FMA latency) stay
// in registers, 32 zmm / 16 ymm.
constexpr int kRowTileAvx512 = 8;
constexpr int kRowTileAvx2 = 4;

// Calls kernel.operator()<R>(m) (a templated lambda) over rows [0, rows) of A in tiles of kTile, the remainder with one smaller R.
template <int R, typename TileKernel>
void run_remainder(int64_t remaining, int64_t m, const TileKernel& kernel) {
  if constexpr (R > 0) {
    if (remaining == R) {
      kernel.template operator()<R>(m);
    } else {
      run_remainder<R - 1>(remaining, m, kernel);
    }
  }
}

template <int kTile, typename TileKernel>
void for_row_tiles(int64_t rows, const TileKernel& kernel) {
  int64_t m = 0;
  for (; m + kTile <= rows; m += kTile) kernel.template operator()<kTile>(m);
  run_remainder<kTile - 1>(rows - m, m, kernel);
}

// Output rows per parallel task: about 16K weights each, so small layers do not pay for many tasks.
int64_t output_row_grain(int64_t K) { return std::max<int64_t>(1, 16384 / std::max<int64_t>(K, 1)); }

// ---- 4-bit ----------------------------------------------------------------------------------------

// The SIMD kernels read 2L codes from L bytes: the high nibbles are the even elements, the low nibbles the
// odd ones. Rather than interleave the decoded weights, A is reordered once per call to match: within
// each chunk of 2L elements, the L even elements first, then the L odd ones.
std::vector<float> split_even_odd(const float* a, int64_t rows, int64_t K, int64_t lanes) {
  std::vector<float> out(static_cast<size_t>(rows * K));
  for (int64_t r = 0; r < rows; ++r) {
    const float* src = a + r * K;
    float* dst = out.data() + r * K;
    for (int64_t chunk = 0; chunk < K; chunk += 2 * lanes) {
      for (int64_t j = 0; j < lanes; ++j) {
        dst[chunk + j] = src[chunk + 2 * j];
        dst[chunk + lanes + j] = src[chunk + 2 * j + 1];
      }
    }
  }
  return out;
}

struct Fused4bitArgs {
  const float* a;        // [M, K] float32 (reordered by split_even_odd for the SIMD kernels)
  const uint8_t* packed;  // codes of W [N, K], flattened row-major
  const float* absmax;   // per block of the flattened W
  const float* table;    // 16 code values
  int64_t M, N, K, blocksize;
  float* out;  // [M, N]
};

#if IMAGETOTEXT_X86
template <int R>
__attribute__((target("avx512f,avx512bw"))) void rows_4bit_avx512(const Fused4bitArgs& p, int64_t n, int64_t m0) {
  const uint8_t* codes = p.packed + n * p.K / 2;
  const float* absmax = p.absmax + n * p.K / p.blocksize;
  const float* a = p.a + m0 * p.K;
  const __m512 table = _mm512_loadu_ps(p.table);
  __m512 acc_even[R], acc_odd[R];
  for (int r = 0; r < R; ++r) acc_even[r] = acc_odd[r] = _mm512_setzero_ps();
  for (int64_t begin = 0; begin < p.K; begin += p.blocksize) {
    const __m512 scaled_table = _mm512_mul_ps(table, _mm512_set1_ps(absmax[begin / p.blocksize]));
    for (int64_t k = begin; k < begin + p.blocksize; k += 32) {
      const __m512i byte = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(codes + k / 2)));
      // permutexvar reads the low 4 bits of each index: the low nibble needs no mask.
      const __m512 w_even = _mm512_permutexvar_ps(_mm512_srli_epi32(byte, 4), scaled_table);
      const __m512 w_odd = _mm512_permutexvar_ps(byte, scaled_table);
      for (int r = 0; r < R; ++r) {
        acc_even[r] = _mm512_fmadd_ps(w_even, _mm512_loadu_ps(a + r * p.K + k), acc_even[r]);
        acc_odd[r] = _mm512_fmadd_ps(w_odd, _mm512_loadu_ps(a + r * p.K + k + 16), acc_odd[r]);
      }
    }
  }
  for (int r = 0; r < R; ++r) p.out[(m0 + r) * p.N + n] = _mm512_reduce_add_ps(_mm512_add_ps(acc_even[r], acc_odd[r]));
}

__attribute__((target("avx2,fma"))) inline float reduce_add_avx2(__m256 v) {
  __m128 sum = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  sum = _mm_add_ps(sum, _mm_movehl_ps(sum, sum));
  sum = _mm_add_ss(sum, _mm_movehdup_ps(sum));
  return _mm_cvtss_f32(sum);
}

// A 16-entry float lookup with 8-lane permutes: bit 3 of the index picks the table half (moved to the
// sign bit for blendv); permutevar8x32 reads the low 3 bits, so no index needs a mask.
__attribute__((target("avx2,fma"))) inline __m256 lookup16_avx2(__m256i index, __m256 low_half, __m256 high_half) {
  const __m256 from_low = _mm256_permutevar8x32_ps(low_half, index);
  const __m256 from_high = _mm256_permutevar8x32_ps(high_half, index);
  return _mm256_blendv_ps(from_low, from_high, _mm256_castsi256_ps(_mm256_slli_epi32(index, 28)));
}

template <int R>
__attribute__((target("avx2,fma"))) void rows_4bit_avx2(const Fused4bitArgs& p, int64_t n, int64_t m0) {
  const uint8_t* codes = p.packed + n * p.K / 2;
  const float* absmax = p.absmax + n * p.K / p.blocksize;
  const float* a = p.a + m0 * p.K;
  const __m256 table_low = _mm256_loadu_ps(p.table), table_high = _mm256_loadu_ps(p.table + 8);
  __m256 acc_even[R], acc_odd[R];
  for (int r = 0; r < R; ++r) acc_even[r] = acc_odd[r] = _mm256_setzero_ps();
  for (int64_t begin = 0; begin < p.K; begin += p.blocksize) {
    const __m256 scale = _mm256_set1_ps(absmax[begin / p.blocksize]);
    const __m256 low_half = _mm256_mul_ps(table_low, scale), high_half = _mm256_mul_ps(table_high, scale);
    for (int64_t k = begin; k < begin + p.blocksize; k += 16) {
      const __m256i byte = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(codes + k / 2)));
      const __m256 w_even = lookup16_avx2(_mm256_srli_epi32(byte, 4), low_half, high_half);
      const __m256 w_odd = lookup16_avx2(byte, low_half, high_half);
      for (int r = 0; r < R; ++r) {
        acc_even[r] = _mm256_fmadd_ps(w_even, _mm256_loadu_ps(a + r * p.K + k), acc_even[r]);
        acc_odd[r] = _mm256_fmadd_ps(w_odd, _mm256_loadu_ps(a + r * p.K + k + 8), acc_odd[r]);
      }
    }
  }
  for (int r = 0; r < R; ++r) p.out[(m0 + r) * p.N + n] = reduce_add_avx2(_mm256_add_ps(acc_even[r], acc_odd[r]));
}
#endif



// Any shape, any blocksize (blocks and bytes may straddle rows): decode one row of W into a float32
// buffer with the flat element index, then one dot product per row of A.
void rows_4bit_scalar(const Fused4bitArgs& p, int64_t n, std::vector<float>& w) {
  const int64_t first = n * p.K;
  for (int64_t k = 0; k < p.K; ++k) {
    const int64_t i = first + k;
    const uint8_t byte = p.packed[i / 2];
    w[k] = p.table[(i & 1) ? quant::low_nibble(byte) : quant::high_nibble(byte)] * p.absmax[i / p.blocksize];
  }
  for (int64_t m = 0; m < p.M; ++m) {
    const float* a = p.a + m * p.K;
    float sum = 0.0f;
    for (int64_t k = 0; k < p.K; ++k) sum += w[k] * a[k];
    p.out[m * p.N + n] = sum;
  }
}

void matmul_4bit_rows(const Fused4bitArgs& p, SimdLevel level) {
  at::parallel_for(0, p.N, output_row_grain(p.K), [&](int64_t first, int64_t last) {
    std::vector<float> w;
    if (level == SimdLevel::scalar) w.resize(static_cast<size_t>(p.K));
    for (int64_t n = first; n < last; ++n) {
#if IMAGETOTEXT_X86  // simd_level() is scalar elsewhere
      if (level == SimdLevel::avx512) {
        for_row_tiles<kRowTileAvx512>(p.M, [&]<int R>(int64_t m0) { rows_4bit_avx512<R>(p, n, m0); });
        continue;
      }
      if (level == SimdLevel::avx2) {
        for_row_tiles<kRowTileAvx2>(p.M, [&]<int R>(int64_t m0) { rows_4bit_avx2<R>(p, n, m0); });
        continue;
      }
#endif
      rows_4bit_scalar(p, n, w);
    }
  });
}

// A as a contiguous float32 [M, K] (a copy unless it already is one).
at::Tensor float_rows(const at::Tensor& A) { return A.to(at::kFloat).contiguous(); }

// out [M, N] float32 = a [M, K] float32 (contiguous) @ W^T, W the 4-bit weight [N, K].
at::Tensor fused_4bit(const at::Tensor& a, const at::Tensor& packed, const at::Tensor& absmax, int64_t blocksize,
                      quant::QuantType type, int64_t N, int64_t K) {
  const int64_t M = a.size(0);
  at::Tensor out = at::empty({M, N}, a.options());
  if (M == 0 || N == 0) return out;
  if (K == 0) return out.zero_();
  std::array<float, 16> table{};
  for (uint8_t code = 0; code < 16; ++code) table[code] = quant::code_value_4bit(type, code);

  // The SIMD kernels need whole blocks per row (then rows start on a byte and a block, and K is a
  // multiple of 32, the widest chunk); the bitsandbytes blocksizes and model shapes all qualify.
  SimdLevel level = K % blocksize == 0 ? simd_level() : SimdLevel::scalar;
  std::vector<float> reordered;
  const float* a_data = a.data_ptr<float>();
  if (level != SimdLevel::scalar) {
    reordered = split_even_odd(a_data, M, K, level == SimdLevel::avx512 ? 16 : 8);
    a_data = reordered.data();
  }
  const Fused4bitArgs args{a_data, packed.data_ptr<uint8_t>(), absmax.data_ptr<float>(), table.data(),
                           M, N, K, blocksize, out.data_ptr<float>()};
  matmul_4bit_rows(args, level);
  return out;
}

// The fused result [rows, N] float32 plus bias (in float32), rounded once to A's dtype, shaped [..., N].
at::Tensor finish_fused(const at::Tensor& A, at::Tensor out, const std::optional<at::Tensor>& bias) {
  if (bias) out.add_(bias->to(at::kFloat));
  return out.to(A.scalar_type()).view(detail::gemm_output_shape(A, out.size(1)));
}

// Each gemm composes its fusion (ops::GemmFusion): the op's checks on what the weight multiplies, that input
// (rms_norm or silu_mul), the matmul, then the residual.
at::Tensor gemm_4bit_plain(const at::Tensor& A, const at::Tensor& packed, const at::Tensor& absmax, int64_t blocksize,
                           c10::string_view quant_type, c10::ArrayRef<int64_t> weight_shape,
                           const std::optional<at::Tensor>& bias) {
  const detail::WeightShape shape = detail::check_gemm_4bit(A, packed, absmax, blocksize, quant_type, weight_shape, bias);
  const int64_t N = shape.out_features, K = shape.in_features;
  const at::Tensor rows = A.reshape({-1, K});
  if (rows.size(0) > kFusedMaxRows) {
    return detail::dequantize_4bit_then_linear(A, packed, absmax, blocksize, quant_type, shape, bias);
  }
  const at::Tensor out = fused_4bit(float_rows(rows), packed.contiguous(), absmax.contiguous(), blocksize,
                                    quant::parse_quant_type(std::string(quant_type)), N, K);
  return finish_fused(A, out, bias);
}

// ---- int8 -----------------------------------------------------------------------------------------

struct FusedInt8Args {
  const float* a;    // [M, K] float32
  const int8_t* cb;  // [N, K]
  const float* scb;  // [N]
  int64_t M, N, K;
  float* out;  // [M, N]
};

// W[n, k] = CB[n, k] * SCB[n] / 127: the row scale is applied once to the int8 dot product.
float int8_row_scale(const FusedInt8Args& p, int64_t n) { return p.scb[n] * quant::kInt8DequantScale; }

#if IMAGETOTEXT_X86
template <int R>
__attribute__((target("avx512f,avx512bw"))) void rows_int8_avx512(const FusedInt8Args& p, int64_t n, int64_t m0) {
  const int8_t* cb = p.cb + n * p.K;
  const float* a = p.a + m0 * p.K;
  __m512 acc0[R], acc1[R];
  for (int r = 0; r < R; ++r) acc0[r] = acc1[r] = _mm512_setzero_ps();
  int64_t k = 0;
  for (; k + 32 <= p.K; k += 32) {
    const __m256i bytes = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(cb + k));
    const __m512 w0 = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm256_castsi256_si128(bytes)));
    const __m512 w1 = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm256_extracti128_si256(bytes, 1)));
    for (int r = 0; r < R; ++r) {
      acc0[r] = _mm512_fmadd_ps(w0, _mm512_loadu_ps(a + r * p.K + k), acc0[r]);
      acc1[r] = _mm512_fmadd_ps(w1, _mm512_loadu_ps(a + r * p.K + k + 16), acc1[r]);
    }
  }
  const float scale = int8_row_scale(p, n);
  for (int r = 0; r < R; ++r) {
    float sum = _mm512_reduce_add_ps(_mm512_add_ps(acc0[r], acc1[r]));
    for (int64_t j = k; j < p.K; ++j) sum += static_cast<float>(cb[j]) * a[r * p.K + j];
    p.out[(m0 + r) * p.N + n] = sum * scale;
  }
}

template <int R>
__attribute__((target("avx2,fma"))) void rows_int8_avx2(const FusedInt8Args& p, int64_t n, int64_t m0) {
  const int8_t* cb = p.cb + n * p.K;
  const float* a = p.a + m0 * p.K;
  __m256 acc0[R], acc1[R];
  for (int r = 0; r < R; ++r) acc0[r] = acc1[r] = _mm256_setzero_ps();
  int64_t k = 0;
  for (; k + 16 <= p.K; k += 16) {
    const __m128i bytes = _mm_loadu_si128(reinterpret_cast<const __m128i*>(cb + k));
    const __m256 w0 = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(bytes));
    const __m256 w1 = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_unpackhi_epi64(bytes, bytes)));
    for (int r = 0; r < R; ++r) {
      acc0[r] = _mm256_fmadd_ps(w0, _mm256_loadu_ps(a + r * p.K + k), acc0[r]);
      acc1[r] = _mm256_fmadd_ps(w1, _mm256_loadu_ps(a + r * p.K + k + 8), acc1[r]);
    }
  }
  const float scale = int8_row_scale(p, n);
  for (int r = 0; r < R; ++r) {
    float sum = reduce_add_avx2(_mm256_add_ps(acc0[r], acc1[r]));
    for (int64_t j = k; j < p.K; ++j) sum += static_cast<float>(cb[j]) * a[r * p.K + j];
    p.out[(m0 + r) * p.N + n] = sum * scale;
  }
}
#endif



void rows_int8_scalar(const FusedInt8Args& p, int64_t n) {
  const int8_t* cb = p.cb + n * p.K;
  const float scale = int8_row_scale(p, n);
  for (int64_t m = 0; m < p.M; ++m) {
    const float* a = p.a + m * p.K;
    float sum = 0.0f;
    for (int64_t k = 0; k < p.K; ++k) sum += static_cast<float>(cb[k]) * a[k];
    p.out[m * p.N + n] = sum * scale;
  }
}

at::Tensor gemm_int8_weight_only_plain(const at::Tensor& A, const at::Tensor& CB, const at::Tensor& SCB,
                                       const std::optional<at::Tensor>& bias) {
  const detail::WeightShape shape = detail::check_gemm_int8_weight_only(A, CB, SCB, bias);
  const int64_t N = shape.out_features, K = shape.in_features;
  const at::Tensor rows = A.reshape({-1, K});
  const int64_t M = rows.size(0);
  if (M > kFusedMaxRows) {
    // float32 (CB * SCB) / 127 rounded once to A's dtype: the weight the CUDA large-M path builds directly.
    const at::Tensor weight = ops::int8_vectorwise_dequant(CB, SCB, A.scalar_type());
    return at::linear(A, weight, bias);
  }
  const at::Tensor a = float_rows(rows), codes = CB.contiguous(), scales = SCB.contiguous();
  at::Tensor out = at::empty({M, N}, a.options());
  const FusedInt8Args p{a.data_ptr<float>(), codes.data_ptr<int8_t>(), scales.data_ptr<float>(), M, N, K,
                        out.data_ptr<float>()};
  const SimdLevel level = simd_level();
  at::parallel_for(0, N, output_row_grain(K), [&](int64_t first, int64_t last) {
    for (int64_t n = first; n < last; ++n) {
#if IMAGETOTEXT_X86  // simd_level() is scalar elsewhere
      if (level == SimdLevel::avx512) {
        for_row_tiles<kRowTileAvx512>(M, [&]<int R>(int64_t m0) { rows_int8_avx512<R>(p, n, m0); });
        continue;
      }
      if (level == SimdLevel::avx2) {
        for_row_tiles<kRowTileAvx2>(M, [&]<int R>(int64_t m0) { rows_int8_avx2<R>(p, n, m0); });
        continue;
      }
#endif
      rows_int8_scalar(p, n);
    }
  });
  return finish_fused(A, out, bias);
}

at::Tensor gemm_4bit_cpu(const at::Tensor& A, const at::Tensor& packed, const at::Tensor& absmax, int64_t blocksize,
                         c10::string_view quant_type, c10::ArrayRef<int64_t> weight_shape,
                         const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& norm_weight,
                         double norm_eps, bool gated, const std::optional<at::Tensor>& residual,
                         const std::optional<at::Tensor>& norm_bias, bool gelu,
                         const std::optional<at::Tensor>& normed_out) {
  constexpr std::string_view op = "gemm_4bit";
  const GemmFusion fusion = detail::check_gemm_fusion(op, A, norm_weight, norm_eps, gated, residual, norm_bias, gelu,
                                                      normed_out);
  detail::check_gemm_4bit(detail::gemm_input_like(A, fusion), packed, absmax, blocksize, quant_type, weight_shape,
                          bias);
  const at::Tensor out =
      gemm_4bit_plain(gemm_input(A, fusion), packed, absmax, blocksize, quant_type, weight_shape, bias);
  return detail::finish_gemm(op, out, fusion);
}

at::Tensor gemm_int8_weight_only_cpu(const at::Tensor& A, const at::Tensor& CB, const at::Tensor& SCB,
                                     const std::optional<at::Tensor>& bias,
                                     const std::optional<at::Tensor>& norm_weight, double norm_eps, bool gated,
                                     const std::optional<at::Tensor>& residual,
                                     const std::optional<at::Tensor>& norm_bias, bool gelu,
                                     const std::optional<at::Tensor>& normed_out) {
  constexpr std::string_view op = "gemm_int8_weight_only";
  const GemmFusion fusion = detail::check_gemm_fusion(op, A, norm_weight, norm_eps, gated, residual, norm_bias, gelu,
                                                      normed_out);
  detail::check_gemm_int8_weight_only(detail::gemm_input_like(A, fusion), CB, SCB, bias);
  return detail::finish_gemm(op, gemm_int8_weight_only_plain(gemm_input(A, fusion), CB, SCB, bias), fusion);
}

at::Tensor gemm_dense_cpu(const at::Tensor& A, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                          const std::optional<at::Tensor>& norm_weight, double norm_eps, bool gated,
                          const std::optional<at::Tensor>& residual,
                          const std::optional<at::Tensor>& norm_bias, bool gelu,
                          const std::optional<at::Tensor>& normed_out) {
  constexpr std::string_view op = "gemm_dense";
  const GemmFusion fusion = detail::check_gemm_fusion(op, A, norm_weight, norm_eps, gated, residual, norm_bias, gelu,
                                                      normed_out);
  detail::check_gemm_dense(detail::gemm_input_like(A, fusion), weight, bias);
  return detail::finish_gemm(op, detail::matmul_then_bias(gemm_input(A, fusion), weight, bias), fusion);
}

}  // namespace
}  // namespace imagetotext::ops

TORCH_LIBRARY_IMPL(imagetotext, CPU, m) {
  m.impl("gemm_dense", &imagetotext::ops::gemm_dense_cpu);
  m.impl("gemm_4bit", &imagetotext::ops::gemm_4bit_cpu);
  m.impl("gemm_int8_weight_only", &imagetotext::ops::gemm_int8_weight_only_cpu);
}
