// Shared by the CPU and CUDA kernels of imagetotext::normalize_pixels: argument checks and output shape.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/ArrayRef.h>

#include <vector>

namespace imagetotext::ops::detail {

// Throws c10::ValueError (Python: ValueError) naming the offending argument; returns the output sizes.
std::vector<int64_t> check_normalize_pixels(const at::Tensor& pixels, c10::ArrayRef<double> mean,
                                            c10::ArrayRef<double> std, at::ScalarType dtype);

}  // namespace imagetotext::ops::detail
