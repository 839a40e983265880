// CPU kernels of imagetotext::int8_vectorwise_quant and imagetotext::int8_vectorwise_dequant (LLM.int8
// row-wise absmax), computed as bitsandbytes' default ops do (reference section 4.1-4.2).
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/tensor.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "../quantize.hpp"

namespace imagetotext::ops {
namespace {

constexpr int64_t kRowGrain = 16;

// round-half-even like torch.round; a NaN (all-zero row: 0 * inf) becomes 0.
int8_t round_to_int8(float v) { return std::isnan(v) ? 0 : static_cast<int8_t>(std::nearbyint(v)); }

template <typename scalar_t>
std::vector<int64_t> quantize_rows(const scalar_t* in, int64_t rows, int64_t cols, double threshold, int8_t* cb,
                                   float* scb) {
  // bitsandbytes compares |x| >= threshold in the input dtype: the threshold is rounded to it first.
  const bool with_outliers = threshold > 0.0;
  const float limit = static_cast<float>(static_cast<scalar_t>(threshold));
  auto is_outlier = [&](float magnitude) { return with_outliers && magnitude >= limit; };
  at::parallel_for(0, rows, kRowGrain, [&](int64_t first, int64_t last) {
    for (int64_t r = first; r < last; ++r) {
      const scalar_t* row = in + r * cols;
      float rowmax = 0.0f;
      for (int64_t c = 0; c < cols; ++c) {
        const float magnitude = std::abs(static_cast<float>(row[c]));
        if (!is_outlier(magnitude)) rowmax = std::max(rowmax, magnitude);
      }
      scb[r] = rowmax;
      // 127 * (1 / rowmax), two roundings: torch evaluates bitsandbytes' `127.0 / row_stats` as a
      // reciprocal times 127, and the CUDA kernel's __fdividef is a reciprocal times 127 as well.
      const float scale = quant::kInt8Range * (1.0f / rowmax);
      for (int64_t c = 0; c < cols; ++c) {
        const float x = static_cast<float>(row[c]);
        cb[r * cols + c] = is_outlier(std::abs(x)) ? 0 : round_to_int8(x * scale);
      }
    }
  });
  std::vector<int64_t> outlier_cols;
  if (!with_outliers) return outlier_cols;
  for (int64_t c = 0; c < cols; ++c) {
    bool outlier = false;
    for (int64_t r = 0; r < rows && !outlier; ++r) outlier = is_outlier(std::abs(static_cast<float>(in[r * cols + c])));
    if (outlier) outlier_cols.push_back(c);
  }
  // With one row the outlier positions are already 0 and the rest of their columns is kept.
  if (rows > 1) {
    for (int64_t c : outlier_cols) {
      for (int64_t r = 0; r < rows; ++r) cb[r * cols + c] = 0;
    }
  }
  return outlier_cols;
}

std::tuple<at::Tensor, at::Tensor, std::optional<at::Tensor>> int8_vectorwise_quant_cpu(const at::Tensor& A,
                                                                                       double threshold) {
  detail::check_int8_vectorwise_quant(A, threshold);
  const at::Tensor input = A.contiguous();
  const int64_t rows = input.size(0), cols = input.size(1);
  at::Tensor cb = at::empty(input.sizes(), input.options().dtype(at::kChar));
  at::Tensor scb = at::empty({rows}, input.options().dtype(at::kFloat));
  std::vector<int64_t> outlier_cols;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "int8_vectorwise_quant_cpu", [&] {
    outlier_cols = quantize_rows(input.data_ptr<scalar_t>(), rows, cols, threshold, cb.data_ptr<int8_t>(),
                                 scb.data_ptr<float>());
  });
  if (threshold == 0.0) return {cb, scb, std::nullopt};
  return {cb, scb, at::tensor(outlier_cols, input.options().dtype(at::kLong))};
}

at::Tensor int8_vectorwise_dequant_cpu(const at::Tensor& CB, const at::Tensor& SCB,
                                       std::optional<at::ScalarType> dtype) {
  detail::check_int8_vectorwise_dequant(CB, SCB, dtype);
  const at::Tensor codes = CB.contiguous(), scales = SCB.contiguous();
  const int64_t rows = codes.size(0), cols = codes.size(1);
  at::Tensor out = at::empty(codes.sizes(), codes.options().dtype(at::kFloat));
  const int8_t* in = codes.data_ptr<int8_t>();
  const float* scb = scales.data_ptr<float>();
  float* dst = out.data_ptr<float>();
  // (CB * SCB) * (1/127): two float32 products, in bitsandbytes' order.
  at::parallel_for(0, rows, kRowGrain, [&](int64_t first, int64_t last) {
    for (int64_t r = first; r < last; ++r) {
      for (int64_t c = 0; c < cols; ++c) {
        const float scaled = static_cast<float>(in[r * cols + c]) * scb[r];
        dst[r * cols + c] = scaled * quant::kInt8DequantScale;
      }
    }
  });
  return dtype ? out.to(*dtype) : out;  // rounded once from the float32 value
}

}  // namespace
}  // namespace imagetotext::ops

TORCH_LIBRARY_IMPL(imagetotext, CPU, m) {
  m.impl("int8_vectorwise_quant", &imagetotext::ops::int8_vectorwise_quant_cpu);
  m.impl("int8_vectorwise_dequant", &imagetotext::ops::int8_vectorwise_dequant_cpu);
}
