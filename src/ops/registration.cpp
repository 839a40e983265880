// The schema of every op in the imagetotext namespace (torch.ops.imagetotext.*). Kernels register their
// implementations per device in src/ops/cpu/ and src/ops/cuda/.
#include <torch/library.h>

TORCH_LIBRARY(imagetotext, m) {
  // uint8 [..., H, W, C] -> dtype [..., C, H, W]: (pixel * scale - mean[c]) / std[c], in float32.
  m.def("normalize_pixels(Tensor pixels, float[] mean, float[] std, float scale, ScalarType dtype) -> Tensor");
}
