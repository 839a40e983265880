// CUDA kernel of imagetotext::resize_pillow. The tables come from the host (the same double-precision
// code as the CPU kernel); the device only does Pillow's integer sums, so CUDA == CPU == Pillow.
#include <ATen/ops/empty.h>
#include <ATen/ops/from_blob.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "../resize_pillow.hpp"

namespace imagetotext::ops {
namespace {

using detail::clip8;
using detail::kResampleRoundingHalf;

constexpr int kThreads = 256;

// An axis table on the device, packed as [first (out) | count (out) | coeffs (out * taps)].
struct DeviceAxis {
  const int32_t* first;
  const int32_t* count;
  const int32_t* coeffs;
  int64_t taps;
};

at::Tensor upload(const std::vector<int32_t>& host, const at::Device& device) {
  auto blob = at::from_blob(const_cast<int32_t*>(host.data()), {static_cast<int64_t>(host.size())}, at::kInt);
  return blob.to(device);  // synchronous copy: `host` may go away after this returns
}

DeviceAxis device_axis(const detail::ResampleAxis& axis, const at::Device& device, at::Tensor& storage) {
  const int64_t out = static_cast<int64_t>(axis.first.size());
  std::vector<int32_t> packed;
  packed.reserve(2 * out + axis.coeffs.size());
  packed.insert(packed.end(), axis.first.begin(), axis.first.end());
  packed.insert(packed.end(), axis.count.begin(), axis.count.end());
  packed.insert(packed.end(), axis.coeffs.begin(), axis.coeffs.end());
  storage = upload(packed, device);
  const int32_t* base = storage.data_ptr<int32_t>();
  return {base, base + out, base + 2 * out, axis.taps};
}

// One thread per output value [image, row, xx, c]; out rows are source rows row_begin + row.
__global__ void horizontal_kernel(const uint8_t* __restrict__ in, uint8_t* __restrict__ out, int64_t total,
                                  int64_t in_rows, int64_t in_width, int64_t row_begin, int64_t rows,
                                  int64_t out_width, int64_t channels, DeviceAxis axis) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t c = i % channels, xx = (i / channels) % out_width, row = i / (channels * out_width);
    const int64_t image = row / rows, y = row_begin + row % rows;
    const uint8_t* src = in + ((image * in_rows + y) * in_width + axis.first[xx]) * channels + c;
    const int32_t* k = axis.coeffs + xx * axis.taps;
    int32_t acc = kResampleRoundingHalf;
    for (int32_t t = 0; t < axis.count[xx]; ++t) acc += static_cast<int32_t>(src[t * channels]) * k[t];
    out[i] = clip8(acc);
  }
}

// One thread per output value [image, yy, i] of rows of row_length values; in row r is source row
// r + row_offset.
__global__ void vertical_kernel(const uint8_t* __restrict__ in, uint8_t* __restrict__ out, int64_t total,
                                int64_t in_rows, int64_t row_length, int64_t row_offset, int64_t out_rows,
                                DeviceAxis axis) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t x = i % row_length, yy = (i / row_length) % out_rows, image = i / (row_length * out_rows);
    const uint8_t* src = in + (image * in_rows + axis.first[yy] - row_offset) * row_length + x;
    const int32_t* k = axis.coeffs + yy * axis.taps;
    int32_t acc = kResampleRoundingHalf;
    for (int32_t t = 0; t < axis.count[yy]; ++t) acc += static_cast<int32_t>(src[t * row_length]) * k[t];
    out[i] = clip8(acc);
  }
}

// One thread per output value [image, y, x, c]; an index of -1 leaves 0, as Pillow does.
__global__ void nearest_kernel(const uint8_t* __restrict__ in, uint8_t* __restrict__ out, int64_t total,
                               int64_t height, int64_t width, int64_t out_height, int64_t out_width,
                               int64_t channels, const int32_t* __restrict__ ys, const int32_t* __restrict__ xs) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t c = i % channels, x = (i / channels) % out_width, y = (i / (channels * out_width)) % out_height;
    const int64_t image = i / (channels * out_width * out_height);
    const int32_t yin = ys[y], xin = xs[x];
    out[i] = (yin < 0 || xin < 0) ? 0 : in[((image * height + yin) * width + xin) * channels + c];
  }
}

int64_t blocks_for(int64_t total) { return std::min<int64_t>((total + kThreads - 1) / kThreads, 65535); }

at::Tensor resize_pillow_cuda(const at::Tensor& pixels, int64_t out_height, int64_t out_width, int64_t filter) {
  const auto plan = detail::plan_resize_pillow(pixels, out_height, out_width, filter);
  if (detail::vertical_pass_first(plan)) {  // two single-axis resizes, in Pillow's order
    return resize_pillow_cuda(resize_pillow_cuda(pixels, out_height, plan.width, filter), out_height, out_width, filter);
  }
  const c10::cuda::CUDAGuard guard(pixels.device());
  const at::Tensor input = pixels.contiguous();
  if (!plan.horizontal && !plan.vertical) return input.clone();  // Image.resize returns a copy
  at::Tensor output = at::empty(plan.out_sizes, input.options());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const at::Device device = input.device();

  if (plan.filter == Resample::nearest) {
    std::vector<int32_t> indices = detail::nearest_indices(plan.height, plan.out_height);
    const auto xs = detail::nearest_indices(plan.width, plan.out_width);
    indices.insert(indices.end(), xs.begin(), xs.end());
    const at::Tensor table = upload(indices, device);
    const int64_t total = output.numel();
    nearest_kernel<<<blocks_for(total), kThreads, 0, stream>>>(
        input.data_ptr<uint8_t>(), output.data_ptr<uint8_t>(), total, plan.height, plan.width, plan.out_height,
        plan.out_width, plan.channels, table.data_ptr<int32_t>(), table.data_ptr<int32_t>() + plan.out_height);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    return output;
  }

  const uint8_t* source = input.data_ptr<uint8_t>();
  int64_t source_rows = plan.height, row_offset = 0;
  at::Tensor vertical_table, horizontal_table, intermediate;
  DeviceAxis vertical{};
  if (plan.vertical) {
    const auto axis = detail::resample_axis(plan.height, plan.out_height, plan.filter);
    row_offset = axis.first.front();  // the rows the vertical pass reads, as Pillow's ybox_first/last
    source_rows = axis.first.back() + axis.count.back() - row_offset;
    vertical = device_axis(axis, device, vertical_table);
  }
  if (plan.horizontal) {
    const DeviceAxis horizontal =
        device_axis(detail::resample_axis(plan.width, plan.out_width, plan.filter), device, horizontal_table);
    uint8_t* target = output.data_ptr<uint8_t>();
    if (plan.vertical) {
      intermediate = at::empty({plan.images, source_rows, plan.out_width, plan.channels}, input.options());
      target = intermediate.data_ptr<uint8_t>();
    }
    const int64_t total = plan.images * source_rows * plan.out_width * plan.channels;
    horizontal_kernel<<<blocks_for(total), kThreads, 0, stream>>>(source, target, total, plan.height, plan.width,
                                                                   row_offset, source_rows, plan.out_width,
                                                                   plan.channels, horizontal);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    if (!plan.vertical) return output;
    source = intermediate.data_ptr<uint8_t>();
  } else {
    source_rows = plan.height;  // no intermediate: the vertical pass reads the input itself
    row_offset = 0;
  }
  const int64_t row_length = (plan.horizontal ? plan.out_width : plan.width) * plan.channels;
  const int64_t total = plan.images * plan.out_height * row_length;
  vertical_kernel<<<blocks_for(total), kThreads, 0, stream>>>(source, output.data_ptr<uint8_t>(), total,
                                                               source_rows, row_length, row_offset,
                                                               plan.out_height, vertical);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return output;
}

}  // namespace
}  // namespace imagetotext::ops

TORCH_LIBRARY_IMPL(imagetotext, CUDA, m) { m.impl("resize_pillow", &imagetotext::ops::resize_pillow_cuda); }
