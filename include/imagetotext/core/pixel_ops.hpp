// C++ entry points of the pixel ops registered with torch (torch.ops.imagetotext.*). Each op has a CPU
// kernel in src/ops/cpu/ and a CUDA kernel in src/ops/cuda/; the dispatcher picks one by device.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <vector>

namespace imagetotext::ops {

// Turns uint8 pixels [..., height, width, channels] into model input [..., channels, height, width] of
// `dtype`: (pixel * scale - mean[c]) / std[c], computed in float32. Processors call it after resizing.
at::Tensor normalize_pixels(const at::Tensor& pixels, const std::vector<double>& mean, const std::vector<double>& std,
                            double scale, at::ScalarType dtype);

// Pillow's resampling filters, numbered as PIL.Image.Resampling numbers them.
enum class Resample : int { nearest = 0, lanczos = 1, bilinear = 2, bicubic = 3, box = 4, hamming = 5 };

// Resizes uint8 pixels [height, width, channels] (channels 1..4, any device; leading batch dimensions
// are resized alike) to [out_height, out_width, channels] exactly as Pillow's
// Image.resize((out_width, out_height), filter, reducing_gap=None) does, bit for bit: separable integer
// passes (horizontal first) with Pillow's double-precision coefficients in 22-bit fixed point. Every
// channel is resampled on its own, as Pillow does for modes L, RGB, RGBX and CMYK (Image.resize
// premultiplies alpha for RGBA and LA; callers convert to RGB first, as the processors do).
at::Tensor resize_pillow(const at::Tensor& pixels, int64_t out_height, int64_t out_width, Resample filter);

}  // namespace imagetotext::ops
