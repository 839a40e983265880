// The one table of models: every name model_selector accepts, with its family, hub id, revision and
// quantization. A new model is one more row here (and, for a new family, one more family type).
#pragma once

#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace imagetotext {

enum class ModelFamily { test, florence2, smolvlm, moondream2 };

// How linear-layer weights are stored and multiplied.
enum class Quantization {
  none,      // dense: bf16 on CUDA, fp32 on CPU
  int8,      // INT8 row-wise absmax weights, weight-only matmul (the fast default for "-int8")
  llm_int8,  // bitsandbytes LLM.int8: int8 activations with fp16 outlier columns (threshold 6.0)
  nf4,       // bitsandbytes NF4, blocksize 64, double quantization (the "-int4" models)
  fp4,       // bitsandbytes FP4 (Linear4bit's default type; pre-quantized checkpoints may hold it)
};

std::string_view family_name(ModelFamily family) noexcept;
std::string_view quantization_name(Quantization quantization) noexcept;

struct ModelSpec {
  std::string_view name;      // what model_selector takes, e.g. "SmolVLM-256M-Instruct-int8"
  ModelFamily family;
  std::string_view repo_id;   // Hugging Face hub id; "test-dummy-model" for the test model, as in the service
  std::string_view revision;  // the branch, tag or commit that is downloaded
  Quantization quantization;
};

// Every registered model, in the order the service lists them.
std::span<const ModelSpec> model_registry() noexcept;

// The names of every registered model.
std::vector<std::string> available_models();

// The service's default model.
inline constexpr std::string_view kDefaultModel = "Florence-2-base";

// Looks a name up; throws UnknownModelError listing the valid names.
const ModelSpec& find_model(std::string_view name);

}  // namespace imagetotext
