// The bitsandbytes quantization formats as plain constants and constexpr functions: no torch, no other
// dependency, usable from host C++, CPU kernels and CUDA kernels alike. Every numeric fact of the
// formats lives here once; docs/quantization.md describes the bytes, shared/reference/bitsandbytes.md
// (sections 1-2) is where each value comes from.
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define IMAGETOTEXT_HOST_DEVICE __host__ __device__
#else
#define IMAGETOTEXT_HOST_DEVICE
#endif

namespace imagetotext::quant {

// ---- Blocks ----------------------------------------------------------------------------------------

// 4-bit formats: one float32 absmax per block of `blocksize` consecutive elements of the flattened
// (row-major) tensor; the last block may be partial and has its own absmax.
inline constexpr int64_t kDefaultBlocksize4bit = 64;
inline constexpr int64_t kMinBlocksize4bit = 32;
inline constexpr int64_t kMaxBlocksize4bit = 4096;
// Double quantization quantizes the 4-bit absmax vector with the 8-bit dynamic map in blocks of 256.
inline constexpr int64_t kNestedBlocksize = 256;
// The 8-bit dynamic map has 256 entries, sorted ascending; its binary search below depends on that.
inline constexpr int kDynamicMapSize = 256;

// bitsandbytes accepts the powers of two from 32 to 4096 for 4-bit blocks.
IMAGETOTEXT_HOST_DEVICE constexpr bool is_valid_blocksize_4bit(int64_t blocksize) {
  return blocksize >= kMinBlocksize4bit && blocksize <= kMaxBlocksize4bit && (blocksize & (blocksize - 1)) == 0;
}

IMAGETOTEXT_HOST_DEVICE constexpr int64_t block_count(int64_t numel, int64_t blocksize) {
  return (numel + blocksize - 1) / blocksize;
}

// ---- 4-bit packing ---------------------------------------------------------------------------------
//
// Two codes per byte, in element order: element 2j goes to the HIGH nibble of byte j, element 2j+1 to
// the LOW nibble (byte = code[2j] << 4 | code[2j+1]). For an odd element count the last low nibble holds
// the code of a padded 0.0. The packed tensor is uint8 of shape [(n + 1) / 2, 1].

IMAGETOTEXT_HOST_DEVICE constexpr int64_t packed_4bit_bytes(int64_t numel) { return (numel + 1) / 2; }
IMAGETOTEXT_HOST_DEVICE constexpr uint8_t pack_4bit(uint8_t even_code, uint8_t odd_code) {
  return static_cast<uint8_t>((even_code << 4) | (odd_code & 0xF));
}
IMAGETOTEXT_HOST_DEVICE constexpr uint8_t high_nibble(uint8_t byte) { return byte >> 4; }
IMAGETOTEXT_HOST_DEVICE constexpr uint8_t low_nibble(uint8_t byte) { return byte & 0xF; }

enum class QuantType : uint8_t { nf4, fp4 };

// ---- NF4 -------------------------------------------------------------------------------------------

// The NF4 table (bitsandbytes' get_4bit_type("nf4") / nf4_dequantization_lut), indexed by code.
IMAGETOTEXT_HOST_DEVICE constexpr float nf4_value(uint8_t code) {
  constexpr float table[16] = {-1.0f,
                               -0.6961928009986877f,
                               -0.5250730514526367f,
                               -0.39491748809814453f,
                               -0.28444138169288635f,
                               -0.18477343022823334f,
                               -0.09105003625154495f,
                               0.0f,
                               0.07958029955625534f,
                               0.16093020141124725f,
                               0.24611230194568634f,
                               0.33791524171829224f,
                               0.44070982933044434f,
                               0.5626170039176941f,
                               0.7229568362236023f,
                               1.0f};
  return table[code & 0xF];
}

// Threshold between codes i and i+1: bitsandbytes' dQuantizeNF4 literals are exactly these float32
// midpoints (reference section 1.3), so they are computed, not copied.
IMAGETOTEXT_HOST_DEVICE constexpr float nf4_midpoint(int i) { return (nf4_value(i) + nf4_value(i + 1)) * 0.5f; }

// Nearest NF4 code of a scaled value s = x * (1 / absmax). Strict `>` as in dQuantizeNF4: a value exactly
// on a midpoint takes the lower code, and NaN (an all-zero block: 0 * inf) takes code 0. The code is the
// number of midpoints below s, which is what the kernel's binary tree computes, written branch-free.
IMAGETOTEXT_HOST_DEVICE constexpr uint8_t nf4_encode(float s) {
  uint8_t code = 0;
  for (int i = 0; i < 15; ++i) code += s > nf4_midpoint(i) ? 1 : 0;
  return code;
}

// ---- FP4 -------------------------------------------------------------------------------------------

// bitsandbytes' FP4 (1 sign bit = bit 3, 2 exponent bits, 1 mantissa bit, bias 2): the magnitudes
// {0, 0.0625, 8, 12, 4, 6, 2, 3} / 12 in float32, indexed by the 3 low bits; -0 .. -3 for bit 3 set.
IMAGETOTEXT_HOST_DEVICE constexpr float fp4_value(uint8_t code) {
  constexpr float magnitude[8] = {0.0f / 12.0f, 0.0625f / 12.0f, 8.0f / 12.0f, 12.0f / 12.0f,
                                  4.0f / 12.0f, 6.0f / 12.0f,    2.0f / 12.0f, 3.0f / 12.0f};
  const float m = magnitude[code & 0x7];
  return (code & 0x8) ? -m : m;
}

// Nearest FP4 code with dQuantizeFP4's literal thresholds, which are NOT all exact midpoints
// (0.583333f is 6 ulp below its midpoint, 0.00260417f ~14 ulp above, ...): copied verbatim so the bytes
// match. Ascending, with the code each magnitude rank maps to. The sign bit is set when s < 0, so a
// small negative value encodes as 0b1000 ("-0") while -0.0f encodes as 0b0000.
IMAGETOTEXT_HOST_DEVICE constexpr uint8_t fp4_encode(float s) {
  constexpr float thresholds[7] = {0.00260417f, 0.0859375f, 0.20833333f, 0.29166667f,
                                   0.4166667f,  0.583333f,  0.8333333f};
  constexpr uint8_t code_of_rank[8] = {0b000, 0b001, 0b110, 0b111, 0b100, 0b101, 0b010, 0b011};
  const uint8_t sign = s < 0.0f ? 0b1000 : 0;
  const float magnitude = s < 0.0f ? -s : s;  // fabsf without <cmath>; NaN stays NaN and ranks 0
  int rank = 0;
  for (int i = 0; i < 7; ++i) rank += magnitude > thresholds[i] ? 1 : 0;
  return static_cast<uint8_t>(code_of_rank[rank] | sign);
}

IMAGETOTEXT_HOST_DEVICE constexpr float code_value_4bit(QuantType type, uint8_t code) {
  return type == QuantType::nf4 ? nf4_value(code) : fp4_value(code);
}
IMAGETOTEXT_HOST_DEVICE constexpr uint8_t encode_4bit(QuantType type, float s) {
  return type == QuantType::nf4 ? nf4_encode(s) : fp4_encode(s);
}

// ---- 8-bit blockwise (dynamic map) ----------------------------------------------------------------

// Index of `s` in a sorted 256-entry code: bitsandbytes' dQuantize<0> verbatim (a 7-step binary search,
// then a strict comparison with the float32 midpoint to the neighbour), so ties resolve as its kernel
// does, which is not always "nearest, lower on tie".
IMAGETOTEXT_HOST_DEVICE constexpr uint8_t encode_8bit(const float* code, float s) {
  int pivot = 127, upper_pivot = 255, lower_pivot = 0;
  float lower = -1.0f, upper = 1.0f;
  float val = code[pivot];
  for (int i = 64; i > 0; i >>= 1) {
    if (s > val) {
      lower_pivot = pivot;
      lower = val;
      pivot += i;
    } else {
      upper_pivot = pivot;
      upper = val;
      pivot -= i;
    }
    val = code[pivot];
  }
  if (upper_pivot == 255) upper = code[upper_pivot];
  if (lower_pivot == 0) lower = code[lower_pivot];
  if (s > val) return static_cast<uint8_t>(s > (upper + val) * 0.5f ? upper_pivot : pivot);
  return static_cast<uint8_t>(s < (lower + val) * 0.5f ? lower_pivot : pivot);
}

// ---- INT8 row-wise (LLM.int8 "vector-wise") --------------------------------------------------------

// CB = round_half_even(x * (127 * (1 / rowmax))); dequantized x = CB * SCB * (1/127) with bitsandbytes' constant.
inline constexpr float kInt8Range = 127.0f;
inline constexpr float kInt8DequantScale = 7.874015718698502e-3f;
// LLM.int8's output scale 1/127^2 as bitsandbytes' CUDA kdequant_mm_int32_fp16 writes it (its pure-torch
// CPU op has the typo 6.200124e-05, 1.8e-5 relative off; reference section 4.4).
inline constexpr float kInt8MatmulDequantScale = 6.200012e-05f;
// LLM.int8's default outlier threshold (|x| >= threshold marks an outlier column).
inline constexpr double kDefaultOutlierThreshold = 6.0;

}  // namespace imagetotext::quant
