// CPU kernel of imagetotext::resize_pillow: Pillow's two integer passes (ImagingResampleInner), the
// horizontal one into a uint8 intermediate holding only the rows the vertical one reads.
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include "../resize_pillow.hpp"

namespace imagetotext::ops {
namespace {

using detail::clip8;
using detail::kResampleRoundingHalf;
using detail::ResampleAxis;

// in: [images, in_rows, in_width, C]; reads rows row_begin .. row_begin + rows - 1 of each image.
// out: [images, rows, out_width, C].
template <int C>
void horizontal_pass(const uint8_t* in, uint8_t* out, int64_t images, int64_t in_rows, int64_t in_width,
                     int64_t row_begin, int64_t rows, const ResampleAxis& axis) {
  const int64_t out_width = static_cast<int64_t>(axis.first.size());
  at::parallel_for(0, images * rows, 16, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const int64_t image = row / rows, y = row_begin + row % rows;
      const uint8_t* src = in + (image * in_rows + y) * in_width * C;
      uint8_t* dst = out + row * out_width * C;
      for (int64_t xx = 0; xx < out_width; ++xx) {
        const int32_t* k = axis.coeffs.data() + xx * axis.taps;
        const uint8_t* p = src + static_cast<int64_t>(axis.first[xx]) * C;
        int32_t acc[C];
        for (int c = 0; c < C; ++c) acc[c] = kResampleRoundingHalf;
        for (int32_t t = 0; t < axis.count[xx]; ++t) {
          for (int c = 0; c < C; ++c) acc[c] += static_cast<int32_t>(p[t * C + c]) * k[t];
        }
        for (int c = 0; c < C; ++c) dst[xx * C + c] = clip8(acc[c]);
      }
    }
  });
}

// in: [images, in_rows, row_length] whose row r holds source row r + row_offset.
// out: [images, out_rows, row_length]. Integer sums are exact, so summing tap by tap over a whole row
// (vectorisable) gives Pillow's per-pixel result.
void vertical_pass(const uint8_t* in, uint8_t* out, int64_t images, int64_t in_rows, int64_t row_length,
                   int64_t row_offset, const ResampleAxis& axis) {
  const int64_t out_rows = static_cast<int64_t>(axis.first.size());
  at::parallel_for(0, images * out_rows, 4, [&](int64_t begin, int64_t end) {
    std::vector<int32_t> acc(row_length);
    for (int64_t row = begin; row < end; ++row) {
      const int64_t image = row / out_rows, yy = row % out_rows;
      const int32_t* k = axis.coeffs.data() + yy * axis.taps;
      std::fill(acc.begin(), acc.end(), kResampleRoundingHalf);
      for (int32_t t = 0; t < axis.count[yy]; ++t) {
        const uint8_t* src = in + (image * in_rows + axis.first[yy] - row_offset + t) * row_length;
        const int32_t weight = k[t];
        for (int64_t i = 0; i < row_length; ++i) acc[i] += static_cast<int32_t>(src[i]) * weight;
      }
      uint8_t* dst = out + row * row_length;
      for (int64_t i = 0; i < row_length; ++i) dst[i] = clip8(acc[i]);
    }
  });
}

void nearest(const uint8_t* in, uint8_t* out, const detail::ResizePlan& plan) {
  const auto ys = detail::nearest_indices(plan.height, plan.out_height);
  const auto xs = detail::nearest_indices(plan.width, plan.out_width);
  const int64_t channels = plan.channels;
  at::parallel_for(0, plan.images * plan.out_height, 16, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const int64_t image = row / plan.out_height, y = ys[row % plan.out_height];
      uint8_t* dst = out + row * plan.out_width * channels;
      for (int64_t x = 0; x < plan.out_width; ++x) {
        for (int64_t c = 0; c < channels; ++c) {
          dst[x * channels + c] =
              (y < 0 || xs[x] < 0) ? 0 : in[((image * plan.height + y) * plan.width + xs[x]) * channels + c];
        }
      }
    }
  });
}

at::Tensor resize_pillow_cpu(const at::Tensor& pixels, int64_t out_height, int64_t out_width, int64_t filter) {
  const auto plan = detail::plan_resize_pillow(pixels, out_height, out_width, filter);
  if (detail::vertical_pass_first(plan)) {  // two single-axis resizes, in Pillow's order
    return resize_pillow_cpu(resize_pillow_cpu(pixels, out_height, plan.width, filter), out_height, out_width, filter);
  }
  const at::Tensor input = pixels.contiguous();
  if (!plan.horizontal && !plan.vertical) return input.clone();  // Image.resize returns a copy
  at::Tensor output = at::empty(plan.out_sizes, input.options());
  if (plan.filter == Resample::nearest) {
    nearest(input.data_ptr<uint8_t>(), output.data_ptr<uint8_t>(), plan);
    return output;
  }
  const uint8_t* source = input.data_ptr<uint8_t>();
  int64_t source_rows = plan.height, row_offset = 0;
  at::Tensor intermediate;
  ResampleAxis vertical;
  if (plan.vertical) {
    vertical = detail::resample_axis(plan.height, plan.out_height, plan.filter);
    row_offset = vertical.first.front();  // the rows the vertical pass reads, as Pillow's ybox_first/last
    source_rows = vertical.first.back() + vertical.count.back() - row_offset;
  }
  if (plan.horizontal) {
    const auto horizontal = detail::resample_axis(plan.width, plan.out_width, plan.filter);
    uint8_t* target = output.data_ptr<uint8_t>();
    if (plan.vertical) {
      intermediate = at::empty({plan.images, source_rows, plan.out_width, plan.channels}, input.options());
      target = intermediate.data_ptr<uint8_t>();
    }
    const auto run = [&]<int C>() {
      horizontal_pass<C>(source, target, plan.images, plan.height, plan.width, row_offset, source_rows, horizontal);
    };
    switch (plan.channels) {
      case 1: run.operator()<1>(); break;
      case 2: run.operator()<2>(); break;
      case 3: run.operator()<3>(); break;
      default: run.operator()<4>(); break;
    }
    if (!plan.vertical) return output;
    source = intermediate.data_ptr<uint8_t>();
  } else {
    source_rows = plan.height;  // no intermediate: the vertical pass reads the input itself
    row_offset = 0;
  }
  const int64_t row_length = (plan.horizontal ? plan.out_width : plan.width) * plan.channels;
  vertical_pass(source, output.data_ptr<uint8_t>(), plan.images, source_rows, row_length, row_offset, vertical);
  return output;
}

}  // namespace
}  // namespace imagetotext::ops

TORCH_LIBRARY_IMPL(imagetotext, CPU, m) { m.impl("resize_pillow", &imagetotext::ops::resize_pillow_cpu); }
