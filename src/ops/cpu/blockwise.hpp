// Loops shared by the CPU kernels of the blockwise formats (4-bit NF4/FP4 and the 8-bit dynamic map):
// per-block absmax and scale, in parallel over blocks. Plain loops the compiler vectorizes at -O3.
#pragma once

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdint>

#include "imagetotext/quant/formats.hpp"

namespace imagetotext::ops::cpu {

// Grain for at::parallel_for over blocks: about 16K elements per task.
inline int64_t block_grain(int64_t blocksize) { return std::max<int64_t>(1, 16384 / blocksize); }

// For each block b of the n elements of `in`: absmax[b] = max |x| in float32 (NaN ignored like CUDA's
// fmaxf), then encode_block(b, begin, end, scale) with scale = 1.0f / absmax[b] (+inf for an all-zero
// block, as bitsandbytes' kernels compute it).
template <typename scalar_t, typename EncodeBlock>
void quantize_blocks(const scalar_t* in, int64_t n, int64_t blocksize, float* absmax, EncodeBlock encode_block) {
  const int64_t blocks = quant::block_count(n, blocksize);
  at::parallel_for(0, blocks, block_grain(blocksize), [&](int64_t first, int64_t last) {
    for (int64_t b = first; b < last; ++b) {
      const int64_t begin = b * blocksize, end = std::min(begin + blocksize, n);
      float amax = 0.0f;
      for (int64_t i = begin; i < end; ++i) amax = std::max(amax, std::abs(static_cast<float>(in[i])));
      absmax[b] = amax;
      encode_block(b, begin, end, 1.0f / amax);
    }
  });
}

// For each block b: out[i] = scalar_t(value(i) * absmax[b]) for i in the block, one float32 product and
// one rounding to scalar_t, as bitsandbytes' dequantize kernels do.
template <typename scalar_t, typename Value>
void dequantize_blocks(int64_t n, int64_t blocksize, const float* absmax, scalar_t* out, Value value) {
  const int64_t blocks = quant::block_count(n, blocksize);
  at::parallel_for(0, blocks, block_grain(blocksize), [&](int64_t first, int64_t last) {
    for (int64_t b = first; b < last; ++b) {
      const int64_t begin = b * blocksize, end = std::min(begin + blocksize, n);
      const float scale = absmax[b];
      for (int64_t i = begin; i < end; ++i) out[i] = static_cast<scalar_t>(value(i) * scale);
    }
  });
}

}  // namespace imagetotext::ops::cpu
