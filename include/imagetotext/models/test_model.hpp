// The service's `test` model: no network, no weights. Each caption is "Test description for <name>"
// after a configurable delay (1 s by default, as the service's TestImageToText sleeps). Unlike the
// service it decodes the image first, so the whole io path is exercised and a bad image fails as it
// would with a real model.
#pragma once

#include <chrono>
#include <string>
#include <thread>

#include "imagetotext/image_to_text.hpp"

namespace imagetotext {

struct TestFamily {
  struct Model {
    std::chrono::milliseconds delay;
  };

  static Model load(const ModelSpec&, const ModelOptions& options) { return Model{options.test_delay}; }

  static std::string caption(Model& model, const io::RgbImage& image) {
    std::this_thread::sleep_for(model.delay);
    return "Test description for " + image.name;
  }
};

extern template class ImageToText<TestFamily>;

}  // namespace imagetotext
