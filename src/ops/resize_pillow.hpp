// Shared by the CPU and CUDA kernels of imagetotext::resize_pillow: argument checks and the per-axis
// tables, computed on the host in double precision exactly as Pillow's src/libImaging/Resample.c does,
// so that both kernels only do Pillow's integer arithmetic.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <vector>

#include "imagetotext/core/pixel_ops.hpp"

namespace imagetotext::ops::detail {

// Pillow's fixed point: coefficients scaled by 2^22; accumulators start at half a unit.
constexpr int kResamplePrecisionBits = 22;
constexpr int32_t kResampleRoundingHalf = 1 << (kResamplePrecisionBits - 1);

// One axis of a resampling filter (in_size -> out_size): output i is the weighted sum of inputs
// first[i] .. first[i] + count[i] - 1 with the integer weights coeffs[i * taps ...].
struct ResampleAxis {
  int64_t taps = 0;
  std::vector<int32_t> first, count, coeffs;
};

// The pixels as [images, height, width, channels] plus what to do with them.
struct ResizePlan {
  int64_t images = 0, height = 0, width = 0, channels = 0, out_height = 0, out_width = 0;
  Resample filter = Resample::bicubic;
  std::vector<int64_t> out_sizes;  // [..., out_height, out_width, channels]
  bool horizontal = false, vertical = false;  // Pillow skips the pass of an axis whose size is unchanged
};

// Throws c10::ValueError (Python: ValueError) naming the offending argument.
ResizePlan plan_resize_pillow(const at::Tensor& pixels, int64_t out_height, int64_t out_width, int64_t filter);

// Whether Pillow runs the vertical pass before the horizontal one. Pillow 13 (python-pillow/Pillow#9549)
// does so when "the height is scaled down significantly more than the width"; no source of that rule could
// be read here, so this is fitted to Pillow 13 itself: vertical first when the height shrinks and the
// vertical-first intermediate (width x out_height) is smaller than the horizontal-first one (out_width x
// height). It matches Pillow 13 wherever at most one axis shrinks and on about 9 in 10 random sizes where
// both do (on the others the two orders differ by a few levels on noise, less on photographs).
bool vertical_pass_first(const ResizePlan& plan);

// Pillow's precompute_coeffs + normalize_coeffs_8bpc for a convolution filter (not nearest).
ResampleAxis resample_axis(int64_t in_size, int64_t out_size, Resample filter);

// Pillow's nearest-neighbour source index per output position (ImagingScaleAffine's incremental
// double arithmetic); -1 where Pillow leaves the output 0.
std::vector<int32_t> nearest_indices(int64_t in_size, int64_t out_size);

// Pillow's clip8: the accumulator's integer part clamped to [0, 255].
#if defined(__CUDACC__)
__host__ __device__
#endif
inline uint8_t clip8(int32_t accumulator) {
  const int32_t value = accumulator >> kResamplePrecisionBits;
  return static_cast<uint8_t>(value < 0 ? 0 : (value > 255 ? 255 : value));
}

}  // namespace imagetotext::ops::detail
