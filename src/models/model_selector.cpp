#include <c10/core/Device.h>
#include <fmt/format.h>

#include "imagetotext/core/error.hpp"
#include "imagetotext/image_to_text.hpp"
#include "imagetotext/models/florence2.hpp"
#include "imagetotext/models/smolvlm.hpp"
#include "imagetotext/models/test_model.hpp"

namespace imagetotext {

template class ImageToText<TestFamily>;

namespace {
bool is_cpu_or_cuda(const std::string& device) {
  try {
    const c10::Device parsed(device);
    return parsed.is_cpu() || parsed.is_cuda();
  } catch (const c10::Error&) {
    return false;  // not a device string at all
  }
}

void check_device(const std::string& device) {
  if (device != "auto" && !is_cpu_or_cuda(device)) {
    throw InvalidArgumentError(fmt::format("unknown device '{}' (use auto, cpu, cuda or cuda:N)", device));
  }
}
}  // namespace

std::unique_ptr<Captioner> model_selector(std::string_view name, const ModelOptions& options) {
  return make_captioner(find_model(name), options);
}

std::unique_ptr<Captioner> make_captioner(const ModelSpec& spec, const ModelOptions& options) {
  check_device(options.device);
  switch (spec.family) {
    case ModelFamily::test:
      return std::make_unique<ImageToText<TestFamily>>(spec, options);
    case ModelFamily::florence2:
      return std::make_unique<ImageToText<Florence2Family>>(spec, options);
    case ModelFamily::smolvlm:
      return std::make_unique<ImageToText<SmolVLMFamily>>(spec, options);
    case ModelFamily::moondream2:
      break;
  }
  throw ModelNotImplementedError(fmt::format("model '{}' ({} family) is registered but not built yet in this "
                                             "version of imagetotext",
                                             spec.name, family_name(spec.family)));
}

}  // namespace imagetotext
