// Host entry shared between the CUDA INT8 kernels: the row-wise dequantization written straight to a
// chosen dtype (float32 for int8_vectorwise_dequant, A's dtype for gemm_int8_weight_only's large-M path).
#pragma once

#include <ATen/core/Tensor.h>

namespace imagetotext::ops::cuda {

// dtype((CB * SCB[row]) * (1/127)), the two float32 products rounded as the CPU kernel rounds them. CB int8
// [rows, cols] and SCB float32 [rows], checked by the caller, on one CUDA device.
at::Tensor int8_dequantize_rows(const at::Tensor& CB, const at::Tensor& SCB, at::ScalarType dtype);

}  // namespace imagetotext::ops::cuda
