// Test runner. A run that selects only [gpu] cases exits with 77 (CTest's SKIP_RETURN_CODE) when no
// CUDA device is present, so GPU tests show as skipped rather than passed on a machine without one.
#if IMAGETOTEXT_CATCH_MAJOR < 3
#define CATCH_CONFIG_RUNNER
#endif
#include <ATen/Context.h>

#include <cstdio>
#include <string_view>

#include "catch.hpp"

int main(int argc, char** argv) {
  for (int i = 1; i < argc; ++i) {
    if (std::string_view(argv[i]) == "[gpu]" && !at::hasCUDA()) {
      std::puts("no CUDA device: skipping the [gpu] tests");
      return 77;
    }
  }
  return Catch::Session().run(argc, argv);
}
