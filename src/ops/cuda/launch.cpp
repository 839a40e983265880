#include "launch.cuh"

#include <cstdlib>
#include <cstring>

namespace imagetotext::ops::cuda {

bool overlapped_launches_enabled() {
  static const bool allowed = [] {
    const char* value = std::getenv("IMAGETOTEXT_OVERLAP_LAUNCHES");
    return value == nullptr || std::strcmp(value, "0") != 0;
  }();
  return allowed && at::cuda::getCurrentDeviceProperties()->major >= 9;
}

}  // namespace imagetotext::ops::cuda
