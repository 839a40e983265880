// Tools over a model's checkpoint that run the family's own loading code (with LinearPolicy::on_load
// watching), so they follow each family's linear-layer policy without a second copy of it: the Linear layers
// a checkpoint builds and the format each gets, the weight memory of a variant, and writing a pre-quantized
// checkpoint in bitsandbytes' layout (`imagetotext quantize`).
#pragma once

#include <c10/core/ScalarType.h>

#include <array>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "imagetotext/io/hub.hpp"
#include "imagetotext/io/safetensors.hpp"
#include "imagetotext/models/registry.hpp"
#include "imagetotext/nn/linear.hpp"

namespace imagetotext {

// The files beside config.json and the weights that a model's processor, tokenizer and generation may read:
// what `imagetotext download` fetches and `imagetotext quantize` copies, when the repository has them.
inline constexpr std::array<std::string_view, 11> kModelSideFiles{
    "generation_config.json", "preprocessor_config.json", "processor_config.json", "tokenizer.json",
    "tokenizer_config.json",  "special_tokens_map.json",  "added_tokens.json",     "chat_template.json",
    "chat_template.jinja",    "vocab.json",               "merges.txt"};

// Where a model's files are and which family reads them.
struct CheckpointSource {
  std::string repo;      // hub id or local directory
  std::string revision;  // hub revision ("main" for a directory)
  ModelFamily family;
};

// A registry name -> its hub id and revision (`revision`, when not empty, instead); otherwise `model` is a
// directory or hub id whose config.json's model_type names the family. Throws UnknownModelError for a name
// that is neither, ModelNotImplementedError for the test model (it has no checkpoint), CheckpointError for
// an unreadable config.json.
CheckpointSource resolve_checkpoint(std::string_view model, const io::HubOptions& hub, std::string_view revision = "");

// The LinearPolicy a family's models load with: `format` for every Linear layer but the family's default
// keep_dense (SmolVLM: lm_head; Florence-2: the vision tower and projector), or `keep_dense` when given.
nn::LinearPolicy family_linear_policy(ModelFamily family, Quantization format,
                                      const std::optional<std::vector<std::string>>& keep_dense = std::nullopt);

// One Linear layer a model builds from a checkpoint.
struct LinearLayerPlan {
  std::string module;  // full name as the model loads it, e.g. "model.text_model.layers.0.mlp.up_proj"
  Quantization format = Quantization::none;  // the format `policy` gives it
  std::int64_t out_features = 0;
  std::int64_t in_features = 0;
};

// The Linear layers the family's model builds from `tensors` (a checkpoint's tensors as stored) with
// `policy`, in load order. The model is loaded on the meta device: no tensor data is read or converted.
// Throws CheckpointError as loading the model would.
std::vector<LinearLayerPlan> plan_linear_layers(ModelFamily family, const std::filesystem::path& config_json,
                                                const io::TensorMap& tensors, const std::filesystem::path& source,
                                                const nn::LinearPolicy& policy);

// Bytes of the weights a model holds once loaded with `policy` and floating-point tensors in `dtype`: every
// tensor the model reads, Linear weights in their quantized layout (QuantizedLinear::weight_bytes). Only shapes
// and dtypes are read, so meta tensors stand for a checkpoint not at hand (`imagetotext models`' computed column);
// a dense policy builds no model (every layer costs its tensors), so a family without a loader still has a figure.
std::size_t weight_memory(ModelFamily family, const std::filesystem::path& config_json, const io::TensorMap& tensors,
                          const std::filesystem::path& source, const nn::LinearPolicy& policy, at::ScalarType dtype);

struct QuantizeCheckpointOptions {
  std::optional<std::vector<std::string>> keep_dense;  // unset: the family's default
  std::string revision;                                // empty: the registry's, or "main"
  io::HubOptions hub;                                  // cache, offline use, download progress
  // Called after each layer is quantized: (layers done, layers to quantize, the layer's name).
  std::function<void(std::size_t done, std::size_t total, const std::string& module)> on_layer;
};

struct QuantizeCheckpointReport {
  std::size_t quantized_layers = 0;
  std::size_t dense_layers = 0;     // Linear layers the policy keeps dense
  std::size_t bytes_before = 0;     // the tensors as stored in the source checkpoint
  std::size_t bytes_after = 0;      // the tensors written
  std::vector<std::filesystem::path> files;  // every file written to the output directory
};

// Writes `model` (a registry name, checkpoint directory or hub id) to `outdir` with its Linear layers in
// `format` (nf4, fp4, int8; llm_int8 is stored as int8), exactly the layers the family's policy quantizes, in
// the layout bitsandbytes' Linear4bit / Linear8bitLt save; every other tensor as stored. The 4-bit layers
// are quantized from the weight's stored dtype with double quantization (blocksize 64), as
// transformers + bitsandbytes quantize at load. config.json gains the `quantization_config` transformers
// writes for such checkpoints (its llm_int8_skip_modules: the layers kept dense); the tokenizer, processor and
// generation files are copied, so `outdir` is a complete checkpoint for load_model. Throws
// InvalidArgumentError for format none, an `outdir` that is not an empty directory, or a checkpoint that is
// already quantized; CheckpointError when `outdir` cannot be written (naming it) or the source is unreadable.
QuantizeCheckpointReport quantize_checkpoint(std::string_view model, Quantization format,
                                             const std::filesystem::path& outdir,
                                             const QuantizeCheckpointOptions& options = {});

// The quantization a checkpoint's config.json declares in its `quantization_config` (bitsandbytes:
// load_in_4bit with bnb_4bit_quant_type nf4/fp4, or load_in_8bit -> int8), and the modules it skips
// (llm_int8_skip_modules); nullopt when it declares none.
struct DeclaredQuantization {
  Quantization format;
  std::optional<std::vector<std::string>> keep_dense;
};
std::optional<DeclaredQuantization> declared_quantization(const std::filesystem::path& config_json);

}  // namespace imagetotext
