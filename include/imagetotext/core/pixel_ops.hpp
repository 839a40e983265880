// C++ entry points of the pixel ops registered with torch (torch.ops.imagetotext.*). Each op has a CPU
// kernel in src/ops/cpu/ and a CUDA kernel in src/ops/cuda/; the dispatcher picks one by device.
#pragma once

#include <ATen/core/Tensor.h>

#include <vector>

namespace imagetotext::ops {

// Turns uint8 pixels [..., height, width, channels] into model input [..., channels, height, width] of
// `dtype`: (pixel * scale - mean[c]) / std[c], computed in float32. Processors call it after resizing.
at::Tensor normalize_pixels(const at::Tensor& pixels, const std::vector<double>& mean, const std::vector<double>& std,
                            double scale, at::ScalarType dtype);

}  // namespace imagetotext::ops
