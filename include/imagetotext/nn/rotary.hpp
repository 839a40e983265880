// Rotary position embedding as Llama applies it (transformers' LlamaRotaryEmbedding, rope_type "default"):
// inverse frequencies 1 / theta^(2i/d) in float32, cos/sin of position * frequency in float32 cast to the
// activation dtype, and the non-interleaved rotation (first half / second half, "rotate_half").
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>

#include <cstdint>
#include <utility>

namespace imagetotext::nn {

class RotaryEmbedding {
 public:
  RotaryEmbedding() = default;
  // Tables for positions 0 .. max_positions - 1, computed once (so a decode step only takes a view).
  RotaryEmbedding(std::int64_t head_dim, double theta, std::int64_t max_positions, c10::Device device,
                  at::ScalarType dtype);

  // cos and sin [length, head_dim] for positions start .. start + length - 1 (views of the tables).
  // Throws InvalidArgumentError past max_positions.
  std::pair<at::Tensor, at::Tensor> at_positions(std::int64_t start, std::int64_t length) const;

  // cos and sin [length, head_dim] at the positions in `positions` (int64 [length] on the tables' device):
  // a gather, so a decode step whose position lives on the device keeps fixed shapes. Positions past the
  // tables are the caller's to exclude.
  std::pair<at::Tensor, at::Tensor> at_positions(const at::Tensor& positions) const;

  std::int64_t max_positions() const noexcept { return cos_.defined() ? cos_.size(0) : 0; }

 private:
  at::Tensor cos_;
  at::Tensor sin_;
};

// x * cos + rotate_half(x) * sin for x [batch, heads, length, head_dim] and cos, sin [length, head_dim].
at::Tensor apply_rotary(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin);

}  // namespace imagetotext::nn
