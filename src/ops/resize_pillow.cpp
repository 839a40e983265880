// Pillow-exact resampling tables (src/libImaging/Resample.c, Geometry.c) and the resize_pillow entry.
// Every expression below keeps Pillow's evaluation order and types (float box edges, double
// coefficients, int truncation): the coefficients must round to the same 22-bit integers. This file is
// compiled with -ffp-contract=off so no multiply-add is fused where Pillow's build does not fuse it.
#include "resize_pillow.hpp"

#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/util/Exception.h>

#include <cmath>
#include <limits>
#include <numbers>

namespace imagetotext::ops {
namespace detail {
namespace {

struct Filter {
  double (*weight)(double);
  double support;
};

double box_filter(double x) { return (x > -0.5 && x <= 0.5) ? 1.0 : 0.0; }

double bilinear_filter(double x) {
  if (x < 0.0) x = -x;
  return x < 1.0 ? 1.0 - x : 0.0;
}

double hamming_filter(double x) {
  if (x < 0.0) x = -x;
  if (x == 0.0) return 1.0;
  if (x >= 1.0) return 0.0;
  x = x * std::numbers::pi;
  return std::sin(x) / x * (0.54f + 0.46f * std::cos(x));  // float literals, as in Pillow
}

double bicubic_filter(double x) {
  constexpr double a = -0.5;
  if (x < 0.0) x = -x;
  if (x < 1.0) return ((a + 2.0) * x - (a + 3.0)) * x * x + 1;
  if (x < 2.0) return (((x - 5) * x + 8) * x - 4) * a;
  return 0.0;
}

double sinc_filter(double x) {
  if (x == 0.0) return 1.0;
  x = x * std::numbers::pi;
  return std::sin(x) / x;
}

double lanczos_filter(double x) { return (-3.0 <= x && x < 3.0) ? sinc_filter(x) * sinc_filter(x / 3) : 0.0; }

Filter filter_of(Resample filter) {
  switch (filter) {
    case Resample::box: return {box_filter, 0.5};
    case Resample::bilinear: return {bilinear_filter, 1.0};
    case Resample::hamming: return {hamming_filter, 1.0};
    case Resample::bicubic: return {bicubic_filter, 2.0};
    case Resample::lanczos: return {lanczos_filter, 3.0};
    case Resample::nearest: break;
  }
  TORCH_CHECK_VALUE(false, "resize_pillow: no convolution filter for nearest");
}

// Image.resize passes box = (0, 0, width, height) as C floats; the scale is computed from them.
double scale_of(int64_t in_size, int64_t out_size) {
  const float in0 = 0.0f, in1 = static_cast<float>(in_size);
  return static_cast<double>(in1 - in0) / static_cast<double>(out_size);
}

}  // namespace

ResampleAxis resample_axis(int64_t in_size, int64_t out_size, Resample resample) {
  const Filter filter = filter_of(resample);
  const double scale = scale_of(in_size, out_size);
  const double filterscale = scale < 1.0 ? 1.0 : scale;
  const double support = filter.support * filterscale;
  const double inv_filterscale = 1.0 / filterscale;
  ResampleAxis axis;
  axis.taps = static_cast<int64_t>(std::ceil(support)) * 2 + 1;
  axis.first.resize(out_size);
  axis.count.resize(out_size);
  axis.coeffs.assign(out_size * axis.taps, 0);
  std::vector<double> weights(axis.taps);
  for (int64_t xx = 0; xx < out_size; ++xx) {
    const double center = 0.0 + (static_cast<double>(xx) + 0.5) * scale;
    int xmin = static_cast<int>(center - support + 0.5);
    if (xmin < 0) xmin = 0;
    int xmax = static_cast<int>(center + support + 0.5);
    if (xmax > in_size) xmax = static_cast<int>(in_size);
    xmax -= xmin;
    double ww = 0.0;
    for (int x = 0; x < xmax; ++x) {
      const double w = filter.weight((static_cast<double>(x + xmin) - center + 0.5) * inv_filterscale);
      weights[x] = w;
      ww += w;
    }
    if (ww != 0.0) {
      for (int x = 0; x < xmax; ++x) weights[x] /= ww;
    }
    int32_t* k = axis.coeffs.data() + xx * axis.taps;
    for (int x = 0; x < xmax; ++x) {
      const double scaled = weights[x] * (1 << kResamplePrecisionBits);
      k[x] = static_cast<int32_t>(weights[x] < 0 ? -0.5 + scaled : 0.5 + scaled);
    }
    axis.first[xx] = xmin;
    axis.count[xx] = xmax;
  }
  return axis;
}

std::vector<int32_t> nearest_indices(int64_t in_size, int64_t out_size) {
  // _imaging.c resize: a = (box[2] - box[0]) / size; Geometry.c ImagingScaleAffine walks
  // xo = a/2, xo += a and takes COORD(xo) = (int)xo, leaving outputs outside the image at 0.
  const double step = scale_of(in_size, out_size);
  std::vector<int32_t> indices(out_size);
  double position = 0.0 + step * 0.5;
  for (int64_t i = 0; i < out_size; ++i) {
    const int index = position < 0.0 ? -1 : static_cast<int>(position);
    indices[i] = index < in_size ? index : -1;
    position += step;
  }
  return indices;
}

bool vertical_pass_first(const ResizePlan& plan) {
  return plan.horizontal && plan.vertical && plan.filter != Resample::nearest && plan.out_height < plan.height &&
         plan.width * plan.out_height < plan.out_width * plan.height;
}

ResizePlan plan_resize_pillow(const at::Tensor& pixels, int64_t out_height, int64_t out_width, int64_t filter) {
  TORCH_CHECK_VALUE(pixels.scalar_type() == at::kByte, "resize_pillow: pixels must be uint8, got ",
                    pixels.scalar_type());
  TORCH_CHECK_VALUE(pixels.dim() >= 3, "resize_pillow: pixels must be [..., height, width, channels], got shape ",
                    pixels.sizes());
  TORCH_CHECK_VALUE(filter >= 0 && filter <= 5, "resize_pillow: unknown filter ", filter,
                    " (Pillow's numbers: 0 nearest, 1 lanczos, 2 bilinear, 3 bicubic, 4 box, 5 hamming)");
  ResizePlan plan;
  plan.channels = pixels.size(-1);
  plan.height = pixels.size(-3);
  plan.width = pixels.size(-2);
  TORCH_CHECK_VALUE(plan.channels >= 1 && plan.channels <= 4, "resize_pillow: pixels must have 1 to 4 channels, got ",
                    plan.channels, " (shape ", pixels.sizes(), ")");
  TORCH_CHECK_VALUE(plan.height > 0 && plan.width > 0, "resize_pillow: pixels must not be empty, got shape ",
                    pixels.sizes());
  TORCH_CHECK_VALUE(out_height > 0 && out_width > 0, "resize_pillow: output height and width must be > 0, got ",
                    out_height, "x", out_width);
  constexpr int64_t kMaxSide = std::numeric_limits<int32_t>::max() / 64;  // Pillow's sizes are C ints
  TORCH_CHECK_VALUE(plan.height <= kMaxSide && plan.width <= kMaxSide && out_height <= kMaxSide &&
                        out_width <= kMaxSide,
                    "resize_pillow: sizes must be at most ", kMaxSide, ", got ", plan.height, "x", plan.width, " -> ",
                    out_height, "x", out_width);
  plan.images = pixels.numel() / (plan.height * plan.width * plan.channels);
  plan.out_height = out_height;
  plan.out_width = out_width;
  plan.filter = static_cast<Resample>(filter);
  plan.out_sizes.assign(pixels.sizes().begin(), pixels.sizes().end() - 3);
  plan.out_sizes.insert(plan.out_sizes.end(), {out_height, out_width, plan.channels});
  plan.horizontal = out_width != plan.width;
  plan.vertical = out_height != plan.height;
  return plan;
}

}  // namespace detail

at::Tensor resize_pillow(const at::Tensor& pixels, int64_t out_height, int64_t out_width, Resample filter) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("imagetotext::resize_pillow", "")
                             .typed<at::Tensor(const at::Tensor&, int64_t, int64_t, int64_t)>();
  return op.call(pixels, out_height, out_width, static_cast<int64_t>(filter));
}

}  // namespace imagetotext::ops
