#include "imagetotext/core/device.hpp"

#include <ATen/Context.h>
#include <fmt/format.h>

#include <optional>
#include <string>

#include "imagetotext/core/error.hpp"

namespace imagetotext {

c10::Device resolve_device(std::string_view device) {
  const bool cuda_available = at::hasCUDA() && at::getNumGPUs() > 0;
  if (device == "auto") return cuda_available ? c10::Device(c10::kCUDA, 0) : c10::Device(c10::kCPU);
  std::optional<c10::Device> parsed;
  try {
    parsed.emplace(std::string(device));
  } catch (const c10::Error&) {
  }
  if (!parsed || !(parsed->is_cpu() || parsed->is_cuda())) {
    throw InvalidArgumentError(fmt::format("unknown device '{}' (use auto, cpu, cuda or cuda:N)", device));
  }
  if (parsed->is_cuda()) {
    if (!cuda_available) throw DeviceError(fmt::format("device '{}' asked for, but no CUDA device is usable", device));
    const int index = parsed->has_index() ? parsed->index() : 0;
    if (index >= static_cast<int>(at::getNumGPUs())) {
      throw DeviceError(fmt::format("device '{}' asked for, but there are {} CUDA devices", device, at::getNumGPUs()));
    }
    return c10::Device(c10::kCUDA, static_cast<c10::DeviceIndex>(index));
  }
  return *parsed;
}

at::ScalarType resolve_dtype(std::string_view dtype, c10::Device device) {
  if (dtype == "auto") return device.is_cuda() ? at::kBFloat16 : at::kFloat;
  if (dtype == "float32" || dtype == "fp32" || dtype == "float") return at::kFloat;
  if (dtype == "float16" || dtype == "fp16" || dtype == "half") return at::kHalf;
  if (dtype == "bfloat16" || dtype == "bf16") return at::kBFloat16;
  throw InvalidArgumentError(fmt::format("unknown dtype '{}' (use auto, float32, float16 or bfloat16)", dtype));
}

}  // namespace imagetotext
