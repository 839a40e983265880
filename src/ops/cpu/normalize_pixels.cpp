#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include "../normalize_pixels.hpp"

namespace imagetotext::ops {
namespace {

template <typename scalar_t>
void normalize_rows(const uint8_t* in, scalar_t* out, int64_t images, int64_t height, int64_t width,
                    int64_t channels, const float* mean, const float* std, float scale) {
  // One task per output row (image, channel, y): reads a strided row of the HWC input, writes a
  // contiguous row of the CHW output.
  at::parallel_for(0, images * channels * height, 64, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const int64_t y = row % height, c = (row / height) % channels, n = row / (height * channels);
      const uint8_t* src = in + ((n * height + y) * width) * channels + c;
      scalar_t* dst = out + row * width;
      for (int64_t x = 0; x < width; ++x) {
        dst[x] = static_cast<scalar_t>((static_cast<float>(src[x * channels]) * scale - mean[c]) / std[c]);
      }
    }
  });
}

at::Tensor normalize_pixels_cpu(const at::Tensor& pixels, c10::ArrayRef<double> mean, c10::ArrayRef<double> std,
                                double scale, at::ScalarType dtype) {
  const auto sizes = detail::check_normalize_pixels(pixels, mean, std, dtype);
  const at::Tensor input = pixels.contiguous();
  at::Tensor output = at::empty(sizes, input.options().dtype(dtype));
  const int64_t channels = input.size(-1), height = input.size(-3), width = input.size(-2);
  const int64_t images = channels * height * width == 0 ? 0 : input.numel() / (channels * height * width);
  const std::vector<float> mean_f(mean.begin(), mean.end()), std_f(std.begin(), std.end());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "normalize_pixels_cpu", [&] {
    normalize_rows(input.data_ptr<uint8_t>(), output.data_ptr<scalar_t>(), images, height, width, channels,
                   mean_f.data(), std_f.data(), static_cast<float>(scale));
  });
  return output;
}

}  // namespace
}  // namespace imagetotext::ops

TORCH_LIBRARY_IMPL(imagetotext, CPU, m) { m.impl("normalize_pixels", &imagetotext::ops::normalize_pixels_cpu); }
