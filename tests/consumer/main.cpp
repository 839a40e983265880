// A C++ application using the installed package: select the `test` model and caption pixels.
#include <imagetotext/image_to_text.hpp>
#include <imagetotext/io/image.hpp>

#include <ATen/ops/full.h>

#include <iostream>

int main() {
  imagetotext::ModelOptions options;
  options.test_delay = std::chrono::milliseconds(0);
  auto model = imagetotext::model_selector("test", options);
  const auto pixels = at::full({4, 6, 3}, 128, at::TensorOptions().dtype(at::kByte));
  const auto image = imagetotext::io::rgb_image_from_pixels(pixels, "consumer-image");
  std::cout << "consumer caption: " << model->extract(image) << "\n";
  return 0;
}
