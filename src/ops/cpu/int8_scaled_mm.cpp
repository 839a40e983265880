// CPU kernel of imagetotext::int8_scaled_mm, the core of LLM.int8: int8 x int8 products accumulated
// exactly in int32 (bitsandbytes' igemmlt / torch._int_mm), then bitsandbytes' CUDA dequantization
// kdequant_mm_int32_fp16: half(fmaf(float(acc) * SCA[m] * SCB[n], 6.200012e-05f, bias[n])) (reference
// section 4.3). Products are widened to int16 and summed in pairs (madd), so nothing can overflow below
// K = 2^31 / 127^2 ~ 133K columns.
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <c10/util/Half.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "../quantize.hpp"
#include "simd.hpp"

namespace imagetotext::ops {
namespace {

int32_t dot_int8_scalar(const int8_t* a, const int8_t* b, int64_t K) {
  int32_t sum = 0;
  for (int64_t k = 0; k < K; ++k) sum += static_cast<int32_t>(a[k]) * static_cast<int32_t>(b[k]);
  return sum;
}

#if IMAGETOTEXT_X86
__attribute__((target("avx2"))) int32_t dot_int8_avx2(const int8_t* a, const int8_t* b, int64_t K) {
  __m256i acc = _mm256_setzero_si256();
  int64_t k = 0;
  for (; k + 16 <= K; k += 16) {
    const __m256i a16 = _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(a + k)));
    const __m256i b16 = _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(b + k)));
    acc = _mm256_add_epi32(acc, _mm256_madd_epi16(a16, b16));
  }
  __m128i sum = _mm_add_epi32(_mm256_castsi256_si128(acc), _mm256_extracti128_si256(acc, 1));
  sum = _mm_add_epi32(sum, _mm_shuffle_epi32(sum, 0x4E));
  sum = _mm_add_epi32(sum, _mm_shuffle_epi32(sum, 0xB1));
  return _mm_cvtsi128_si32(sum) + dot_int8_scalar(a + k, b + k, K - k);
}

__attribute__((target("avx512f,avx512bw"))) int32_t dot_int8_avx512(const int8_t* a, const int8_t* b, int64_t K) {
  __m512i acc = _mm512_setzero_si512();
  int64_t k = 0;
  for (; k + 32 <= K; k += 32) {
    const __m512i a16 = _mm512_cvtepi8_epi16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(a + k)));
    const __m512i b16 = _mm512_cvtepi8_epi16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(b + k)));
    acc = _mm512_add_epi32(acc, _mm512_madd_epi16(a16, b16));
  }
  return _mm512_reduce_add_epi32(acc) + dot_int8_scalar(a + k, b + k, K - k);
}
#endif

using DotInt8 = int32_t (*)(const int8_t*, const int8_t*, int64_t);

// Integer sums are exact whichever path runs; IMAGETOTEXT_CPU_SIMD caps it as for the other kernels.
DotInt8 pick_dot_int8() {
#if IMAGETOTEXT_X86
  switch (cpu::simd_level()) {
    case cpu::SimdLevel::avx512: return dot_int8_avx512;
    case cpu::SimdLevel::avx2: return dot_int8_avx2;
    case cpu::SimdLevel::scalar: break;
  }
#endif
  return dot_int8_scalar;
}

at::Tensor int8_scaled_mm_cpu(const at::Tensor& CA, const at::Tensor& CB, const at::Tensor& SCA, const at::Tensor& SCB,
                              const std::optional<at::Tensor>& bias) {
  detail::check_int8_scaled_mm(CA, CB, SCA, SCB, bias);
  const DotInt8 dot = pick_dot_int8();
  const at::Tensor a = CA.contiguous(), b = CB.contiguous(), sca = SCA.contiguous(), scb = SCB.contiguous();
  const int64_t M = a.size(0), N = b.size(0), K = a.size(1);
  std::vector<float> bias_f32(static_cast<size_t>(N), 0.0f);
  if (bias) {
    const at::Tensor b32 = bias->to(at::kFloat).contiguous();
    std::copy_n(b32.data_ptr<float>(), N, bias_f32.begin());
  }
  at::Tensor out = at::empty({M, N}, a.options().dtype(at::kHalf));
  const int8_t* a_data = a.data_ptr<int8_t>();
  const int8_t* b_data = b.data_ptr<int8_t>();
  const float* row_stats = sca.data_ptr<float>();
  const float* col_stats = scb.data_ptr<float>();
  at::Half* dst = out.data_ptr<at::Half>();
  at::parallel_for(0, N, std::max<int64_t>(1, 16384 / std::max<int64_t>(K, 1)), [&](int64_t first, int64_t last) {
    for (int64_t n = first; n < last; ++n) {
      for (int64_t m = 0; m < M; ++m) {
        const int32_t acc = dot(a_data + m * K, b_data + n * K, K);
        const float scaled = static_cast<float>(acc) * row_stats[m] * col_stats[n];
        dst[m * N + n] = static_cast<at::Half>(std::fmaf(scaled, quant::kInt8MatmulDequantScale, bias_f32[n]));
      }
    }
  });
  return out;
}

}  // namespace
}  // namespace imagetotext::ops

TORCH_LIBRARY_IMPL(imagetotext, CPU, m) { m.impl("int8_scaled_mm", &imagetotext::ops::int8_scaled_mm_cpu); }
