#include "imagetotext/nn/rotary.hpp"

#include <ATen/ops/arange.h>
#include <ATen/ops/cat.h>
#include <ATen/ops/index_select.h>
#include <ATen/ops/pow.h>
#include <fmt/format.h>

#include "imagetotext/core/error.hpp"
#include "../ops/layer_ops.hpp"

namespace imagetotext::nn {

RotaryEmbedding::RotaryEmbedding(std::int64_t head_dim, double theta, std::int64_t max_positions, c10::Device device,
                                 at::ScalarType dtype) {
  // The same float32 operations transformers runs (on the CPU), so the tables match it bit for bit there.
  const auto f32 = at::TensorOptions().dtype(at::kFloat);
  const at::Tensor exponents = at::arange(0, head_dim, 2, f32) / static_cast<double>(head_dim);
  const at::Tensor inv_freq = at::pow(theta, exponents).reciprocal();
  const at::Tensor positions = at::arange(max_positions, f32);
  const at::Tensor freqs = positions.unsqueeze(1) * inv_freq.unsqueeze(0);  // one product each, as the matmul does
  const at::Tensor angles = at::cat({freqs, freqs}, -1);
  cos_ = angles.cos().to(device, dtype);
  sin_ = angles.sin().to(device, dtype);
}

std::pair<at::Tensor, at::Tensor> RotaryEmbedding::at_positions(std::int64_t start, std::int64_t length) const {
  if (start < 0 || start + length > max_positions()) {
    throw InvalidArgumentError(fmt::format("positions {} .. {} are past the model's {} positions", start,
                                           start + length - 1, max_positions()));
  }
  return {cos_.narrow(0, start, length), sin_.narrow(0, start, length)};
}

std::pair<at::Tensor, at::Tensor> RotaryEmbedding::at_positions(const at::Tensor& positions) const {
  return {cos_.index_select(0, positions), sin_.index_select(0, positions)};
}

at::Tensor apply_rotary(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin) {
  return ops::rotary(x, cos, sin);
}

}  // namespace imagetotext::nn
