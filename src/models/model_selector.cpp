#include <fmt/format.h>

#include "imagetotext/core/error.hpp"
#include "imagetotext/image_to_text.hpp"
#include "imagetotext/models/test_model.hpp"

namespace imagetotext {

template class ImageToText<TestFamily>;

std::unique_ptr<Captioner> model_selector(std::string_view name, const ModelOptions& options) {
  const ModelSpec& spec = find_model(name);
  switch (spec.family) {
    case ModelFamily::test:
      return std::make_unique<ImageToText<TestFamily>>(spec, options);
    case ModelFamily::florence2:
    case ModelFamily::smolvlm:
    case ModelFamily::moondream2:
      break;
  }
  throw ModelNotImplementedError(fmt::format("model '{}' ({} family) is registered but not built yet in this "
                                             "version of imagetotext",
                                             name, family_name(spec.family)));
}

}  // namespace imagetotext
