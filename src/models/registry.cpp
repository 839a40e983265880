#include "imagetotext/models/registry.hpp"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <array>

#include "imagetotext/core/error.hpp"

namespace imagetotext {
namespace {

using enum ModelFamily;
using enum Quantization;

// The service loads Florence-2 and SmolVLM unpinned (the hub's "main") and moondream2 at 2025-01-09.
constexpr std::array kModels{
    ModelSpec{"test", test, "test-dummy-model", "", none},
    ModelSpec{"Florence-2-base", florence2, "microsoft/Florence-2-base", "main", none},
    ModelSpec{"Florence-2-base-int4", florence2, "microsoft/Florence-2-base", "main", nf4},
    ModelSpec{"Florence-2-large", florence2, "microsoft/Florence-2-large", "main", none},
    ModelSpec{"Florence-2-large-int4", florence2, "microsoft/Florence-2-large", "main", nf4},
    ModelSpec{"SmolVLM-256M-Instruct", smolvlm, "HuggingFaceTB/SmolVLM-256M-Instruct", "main", none},
    ModelSpec{"SmolVLM-256M-Instruct-int8", smolvlm, "HuggingFaceTB/SmolVLM-256M-Instruct", "main", int8},
    ModelSpec{"SmolVLM-500M-Instruct", smolvlm, "HuggingFaceTB/SmolVLM-500M-Instruct", "main", none},
    ModelSpec{"SmolVLM-500M-Instruct-int8", smolvlm, "HuggingFaceTB/SmolVLM-500M-Instruct", "main", int8},
    ModelSpec{"moondream2", moondream2, "vikhyatk/moondream2", "2025-01-09", none},
    ModelSpec{"moondream2-int8", moondream2, "vikhyatk/moondream2", "2025-01-09", int8},
};

}  // namespace

std::string_view family_name(ModelFamily family) noexcept {
  switch (family) {
    case test: return "test";
    case florence2: return "Florence-2";
    case smolvlm: return "SmolVLM";
    case moondream2: return "moondream2";
  }
  return "unknown";
}

std::string_view quantization_name(Quantization quantization) noexcept {
  switch (quantization) {
    case none: return "none";
    case int8: return "int8";
    case llm_int8: return "llm_int8";
    case nf4: return "nf4";
    case fp4: return "fp4";
  }
  return "unknown";
}

std::span<const ModelSpec> model_registry() noexcept { return kModels; }

std::vector<std::string> available_models() {
  std::vector<std::string> names;
  for (const ModelSpec& spec : kModels) names.emplace_back(spec.name);
  return names;
}

const ModelSpec& find_model(std::string_view name) {
  for (const ModelSpec& spec : kModels) {
    if (spec.name == name) return spec;
  }
  throw UnknownModelError(
      fmt::format("unknown model '{}'; available models: {}", name, fmt::join(available_models(), ", ")));
}

}  // namespace imagetotext
