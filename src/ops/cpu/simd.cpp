#include "simd.hpp"

#include <c10/util/Exception.h>

#include <algorithm>
#include <cstdlib>
#include <string_view>

namespace imagetotext::ops::cpu {
namespace {

SimdLevel supported_simd_level() {
#if IMAGETOTEXT_X86
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw")) return SimdLevel::avx512;
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return SimdLevel::avx2;
#endif
  return SimdLevel::scalar;
}

}  // namespace

SimdLevel simd_level() {
  static const SimdLevel supported = supported_simd_level();
  const char* cap = std::getenv("IMAGETOTEXT_CPU_SIMD");
  if (cap == nullptr || *cap == '\0') return supported;
  const std::string_view name(cap);
  SimdLevel wanted = SimdLevel::avx512;
  if (name == "scalar") {
    wanted = SimdLevel::scalar;
  } else if (name == "avx2") {
    wanted = SimdLevel::avx2;
  } else {
    TORCH_CHECK_VALUE(name == "avx512", "IMAGETOTEXT_CPU_SIMD must be scalar, avx2 or avx512, got '", name, "'");
  }
  return std::min(wanted, supported);
}

}  // namespace imagetotext::ops::cpu
