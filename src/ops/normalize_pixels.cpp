#include "normalize_pixels.hpp"

#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/util/Exception.h>

#include "imagetotext/core/pixel_ops.hpp"

namespace imagetotext::ops {
namespace detail {

std::vector<int64_t> check_normalize_pixels(const at::Tensor& pixels, c10::ArrayRef<double> mean,
                                            c10::ArrayRef<double> std, at::ScalarType dtype) {
  TORCH_CHECK_VALUE(pixels.scalar_type() == at::kByte, "normalize_pixels: pixels must be uint8, got ",
                    pixels.scalar_type());
  TORCH_CHECK_VALUE(pixels.dim() >= 3, "normalize_pixels: pixels must be [..., height, width, channels], got shape ",
                    pixels.sizes());
  const int64_t channels = pixels.size(-1);
  TORCH_CHECK_VALUE(static_cast<int64_t>(mean.size()) == channels && static_cast<int64_t>(std.size()) == channels,
                    "normalize_pixels: mean and std need one value per channel (", channels, "), got ", mean.size(),
                    " and ", std.size());
  for (double s : std) TORCH_CHECK_VALUE(s != 0.0, "normalize_pixels: std must not contain zero");
  TORCH_CHECK_VALUE(at::isFloatingType(dtype), "normalize_pixels: dtype must be a floating type, got ", dtype);
  std::vector<int64_t> sizes(pixels.sizes().begin(), pixels.sizes().end() - 3);
  sizes.insert(sizes.end(), {channels, pixels.size(-3), pixels.size(-2)});
  return sizes;
}

}  // namespace detail

at::Tensor normalize_pixels(const at::Tensor& pixels, const std::vector<double>& mean, const std::vector<double>& std,
                            double scale, at::ScalarType dtype) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("imagetotext::normalize_pixels", "")
                             .typed<at::Tensor(const at::Tensor&, c10::ArrayRef<double>, c10::ArrayRef<double>, double,
                                               at::ScalarType)>();
  return op.call(pixels, mean, std, scale, dtype);
}

}  // namespace imagetotext::ops
