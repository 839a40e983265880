#include <ATen/Dispatch.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "../normalize_pixels.hpp"

namespace imagetotext::ops {
namespace {

constexpr int kMaxChannels = 4;

struct ChannelParams {
  float mean[kMaxChannels];
  float std[kMaxChannels];
};

// One thread per output element of [N, C, H, W]; consecutive threads write consecutive x, so stores
// coalesce and loads stride by the channel count.
template <typename scalar_t>
__global__ void normalize_pixels_kernel(const uint8_t* __restrict__ in, scalar_t* __restrict__ out, int64_t total,
                                        int64_t height, int64_t width, int64_t channels, ChannelParams params,
                                        float scale) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t x = i % width, y = (i / width) % height, c = (i / (width * height)) % channels;
    const int64_t n = i / (width * height * channels);
    const float value = static_cast<float>(in[((n * height + y) * width + x) * channels + c]);
    // Explicitly rounded steps: nvcc would otherwise fuse the multiply and subtract into one FMA and
    // differ in the last bit from the CPU kernel and from the processors' numpy arithmetic.
    out[i] = static_cast<scalar_t>(__fdiv_rn(__fsub_rn(__fmul_rn(value, scale), params.mean[c]), params.std[c]));
  }
}

at::Tensor normalize_pixels_cuda(const at::Tensor& pixels, c10::ArrayRef<double> mean, c10::ArrayRef<double> std,
                                 double scale, at::ScalarType dtype) {
  const auto sizes = detail::check_normalize_pixels(pixels, mean, std, dtype);
  TORCH_CHECK_VALUE(pixels.size(-1) <= kMaxChannels, "normalize_pixels: at most ", kMaxChannels,
                    " channels on CUDA, got ", pixels.size(-1));
  const c10::cuda::CUDAGuard guard(pixels.device());
  const at::Tensor input = pixels.contiguous();
  at::Tensor output = at::empty(sizes, input.options().dtype(dtype));
  const int64_t total = output.numel();
  if (total == 0) return output;
  ChannelParams params{};
  for (size_t c = 0; c < mean.size(); ++c) {
    params.mean[c] = static_cast<float>(mean[c]);
    params.std[c] = static_cast<float>(std[c]);
  }
  constexpr int kThreads = 256;
  const int64_t blocks = std::min<int64_t>((total + kThreads - 1) / kThreads, 65535);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "normalize_pixels_cuda", [&] {
    normalize_pixels_kernel<scalar_t><<<blocks, kThreads, 0, stream>>>(
        input.data_ptr<uint8_t>(), output.data_ptr<scalar_t>(), total, input.size(-3), input.size(-2),
        input.size(-1), params, static_cast<float>(scale));
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return output;
}

}  // namespace
}  // namespace imagetotext::ops

TORCH_LIBRARY_IMPL(imagetotext, CUDA, m) { m.impl("normalize_pixels", &imagetotext::ops::normalize_pixels_cuda); }
