// Where a model runs and in which floating dtype, from the strings users pass ("auto", "cuda:1",
// "bfloat16"): one resolution shared by every family and by the bindings.
#pragma once

#include <c10/core/Device.h>
#include <c10/core/ScalarType.h>

#include <string_view>

namespace imagetotext {

// "auto" -> the first CUDA device when one is usable, else the CPU; "cpu", "cuda", "cuda:N" as torch parses
// them. Throws InvalidArgumentError for any other string and DeviceError for a CUDA device that is absent.
c10::Device resolve_device(std::string_view device);

// "auto" -> bfloat16 on CUDA, float32 on the CPU (the service's choices); "float32"/"fp32",
// "float16"/"fp16"/"half", "bfloat16"/"bf16". Throws InvalidArgumentError for any other string.
at::ScalarType resolve_dtype(std::string_view dtype, c10::Device device);

}  // namespace imagetotext
