#include "imagetotext/models/checkpoint_tools.hpp"

#include <c10/core/Device.h>
#include <fmt/format.h>
#include <fmt/ranges.h>

#include <fstream>
#include <map>
#include <set>
#include <system_error>

#include "../io/json_file.hpp"
#include "config_reader.hpp"
#include "imagetotext/core/error.hpp"
#include "imagetotext/image_to_text.hpp"
#include "imagetotext/models/florence2.hpp"
#include "imagetotext/models/smolvlm.hpp"

namespace imagetotext {
namespace {

namespace fs = std::filesystem;

// Loads the family's network from `tensors` with `policy`; the placement decides where its tensors go.
void load_network(ModelFamily family, const fs::path& config_json, const io::TensorMap& tensors, const fs::path& source,
                  const nn::LinearPolicy& policy, const nn::Placement& placement) {
  switch (family) {
    case ModelFamily::smolvlm: {
      const nn::Weights weights(tensors, source, placement);
      (void)smolvlm::SmolVLM::load(weights, load_smolvlm_config(config_json), policy);
      return;
    }
    case ModelFamily::florence2: {
      Florence2Model::Options options;
      options.placement = placement;
      options.policy = policy;
      (void)Florence2Model::load(load_florence2_config(config_json), tensors, source, options);
      return;
    }
    case ModelFamily::test:
    case ModelFamily::moondream2:
      break;
  }
  throw ModelNotImplementedError(fmt::format("{}: the {} family has no checkpoint tools in this version",
                                             source.string(), family_name(family)));
}

// The tensors the model reads, under the names it reads them by (Florence-2's original layout renamed).
io::TensorMap model_tensors(ModelFamily family, const fs::path& config_json, const io::TensorMap& tensors,
                            const fs::path& source) {
  if (family != ModelFamily::florence2) return tensors;
  return florence2_native_tensors(tensors, load_florence2_config(config_json).layout, source);
}

// The stored name of each tensor the model reads by another name (Florence-2's original layout).
std::map<std::string, std::string> stored_names(ModelFamily family, const io::TensorMap& tensors) {
  std::map<std::string, std::string> stored;
  for (const auto& [name, tensor] : tensors) {
    std::optional<std::string> native =
        family == ModelFamily::florence2 ? florence2_native_name(name) : std::optional<std::string>(name);
    if (native) stored.emplace(std::move(*native), name);
  }
  return stored;
}

bool is_weight_file(const fs::path& path) {
  const std::string name = path.filename().string();
  for (std::string_view suffix : {".safetensors", ".safetensors.index.json", ".bin", ".bin.index.json", ".pt", ".pth",
                                  ".ckpt", ".msgpack", ".h5", ".incomplete", ".lock"}) {
    if (name.ends_with(suffix)) return true;
  }
  return false;
}

std::string dtype_name(at::ScalarType dtype) {
  switch (dtype) {
    case at::kHalf: return "float16";
    case at::kBFloat16: return "bfloat16";
    default: return "float32";
  }
}

// BitsAndBytesConfig(...).to_dict() as transformers writes it into config.json for a bnb checkpoint.
nlohmann::json quantization_config(Quantization format, at::ScalarType compute_dtype,
                                   const std::vector<std::string>& skip_modules) {
  const bool four_bit = format == Quantization::nf4 || format == Quantization::fp4;
  nlohmann::json config;
  config["_load_in_4bit"] = four_bit;
  config["_load_in_8bit"] = !four_bit;
  config["bnb_4bit_compute_dtype"] = four_bit ? dtype_name(compute_dtype) : "float32";
  config["bnb_4bit_quant_storage"] = "uint8";
  config["bnb_4bit_quant_type"] = format == Quantization::nf4 ? "nf4" : "fp4";
  config["bnb_4bit_use_double_quant"] = four_bit;
  config["llm_int8_enable_fp32_cpu_offload"] = false;
  config["llm_int8_has_fp16_weight"] = false;
  config["llm_int8_skip_modules"] = skip_modules;
  config["llm_int8_threshold"] = quant::kDefaultOutlierThreshold;
  config["load_in_4bit"] = four_bit;
  config["load_in_8bit"] = !four_bit;
  config["quant_method"] = "bitsandbytes";
  return config;
}

void write_text(const fs::path& path, const std::string& text) {
  std::ofstream file(path, std::ios::binary | std::ios::trunc);
  file << text;
  file.close();
  if (!file) throw CheckpointError(fmt::format("cannot write {}", path.string()));
}

// `outdir` as an empty, writable directory (created if missing), checked before the long work starts.
void prepare_output_directory(const fs::path& outdir) {
  std::error_code error;
  if (fs::exists(outdir, error)) {
    if (!fs::is_directory(outdir, error)) {
      throw InvalidArgumentError(fmt::format("output {} exists and is not a directory", outdir.string()));
    }
    if (!fs::is_empty(outdir, error)) {
      throw InvalidArgumentError(fmt::format("output directory {} is not empty (choose a new or empty one)",
                                             outdir.string()));
    }
  } else if (!fs::create_directories(outdir, error) && error) {
    throw CheckpointError(fmt::format("cannot create the output directory {}: {}", outdir.string(), error.message()));
  }
  const fs::path probe = outdir / ".imagetotext-write-test";
  std::ofstream(probe) << "x";
  if (!fs::exists(probe, error)) {
    throw CheckpointError(fmt::format("cannot write to the output directory {}", outdir.string()));
  }
  fs::remove(probe, error);
}

// The dtype a checkpoint's Linear weights are stored in (the first planned layer's), for the compute dtype
// written into quantization_config.
at::ScalarType stored_dtype(const io::TensorMap& tensors, const std::string& key) {
  const auto it = tensors.find(key);
  return it == tensors.end() ? at::kFloat : it->second.scalar_type();
}

}  // namespace

CheckpointSource resolve_checkpoint(std::string_view model, const io::HubOptions& hub, std::string_view revision) {
  for (const ModelSpec& spec : model_registry()) {
    if (spec.name != model) continue;
    if (spec.family == ModelFamily::test) {
      throw ModelNotImplementedError(fmt::format("model '{}' has no weights (it is the service's test model)", model));
    }
    return {std::string(spec.repo_id), std::string(revision.empty() ? spec.revision : revision), spec.family};
  }
  const bool directory = fs::is_directory(fs::path(model));
  if (!directory && model.find('/') == std::string_view::npos) find_model(model);  // UnknownModelError listing names
  const std::string rev(revision.empty() ? std::string_view("main") : revision);
  const fs::path config_path = io::hub_file(model, "config.json", rev, hub);
  const nlohmann::json config = io::detail::read_json_file(config_path, "model config");
  const detail::ConfigReader reader(config, config_path);
  const ModelFamily family = family_of_model_type(reader.require<std::string>("model_type"), config_path.string());
  return {std::string(model), rev, family};
}

nn::LinearPolicy family_linear_policy(ModelFamily family, Quantization format,
                                      const std::optional<std::vector<std::string>>& keep_dense) {
  if (family == ModelFamily::smolvlm) return smolvlm::linear_policy(format, keep_dense);
  nn::LinearPolicy policy;
  policy.format = format;
  if (family == ModelFamily::florence2) policy.keep_dense = keep_dense.value_or(florence2_keep_dense(false));
  else if (keep_dense) policy.keep_dense = *keep_dense;
  return policy;
}

std::vector<LinearLayerPlan> plan_linear_layers(ModelFamily family, const fs::path& config_json,
                                                const io::TensorMap& tensors, const fs::path& source,
                                                const nn::LinearPolicy& policy) {
  // Dense on the meta device: shapes only. The policy's own format_for decides each layer's format.
  std::vector<LinearLayerPlan> layers;
  nn::LinearPolicy dense = policy;
  dense.format = Quantization::none;
  dense.on_load = [&](const std::string& module, const quant::QuantizedLinear& layer) {
    layers.push_back({module, policy.format_for(module), layer.out_features, layer.in_features});
  };
  load_network(family, config_json, tensors, source, dense, nn::Placement{c10::Device(c10::kMeta), at::kFloat});
  return layers;
}

std::size_t weight_memory(ModelFamily family, const fs::path& config_json, const io::TensorMap& tensors,
                          const fs::path& source, const nn::LinearPolicy& policy, at::ScalarType dtype) {
  std::size_t bytes = 0;
  for (const auto& [name, tensor] : model_tensors(family, config_json, tensors, source)) {
    const bool floating = at::isFloatingType(tensor.scalar_type());
    bytes += floating ? static_cast<std::size_t>(tensor.numel()) * c10::elementSize(dtype) : tensor.nbytes();
  }
  // Dense: every Linear layer costs what its tensors do, so no model is built (moondream2 has no loader yet).
  if (policy.format == Quantization::none) return bytes;
  for (const LinearLayerPlan& layer : plan_linear_layers(family, config_json, tensors, source, policy)) {
    if (layer.format == Quantization::none) continue;
    bytes -= quant::QuantizedLinear::weight_bytes_for(Quantization::none, layer.out_features, layer.in_features, dtype);
    bytes += quant::QuantizedLinear::weight_bytes_for(layer.format, layer.out_features, layer.in_features, dtype,
                                                  policy.options);
  }
  return bytes;
}

QuantizeCheckpointReport quantize_checkpoint(std::string_view model, Quantization format, const fs::path& outdir,
                                             const QuantizeCheckpointOptions& options) {
  if (format == Quantization::none) {
    throw InvalidArgumentError("quantize: the target format must be nf4, fp4 or int8, not none");
  }
  if (format == Quantization::llm_int8) format = Quantization::int8;  // one stored layout; the loader picks the matmul
  const CheckpointSource source = resolve_checkpoint(model, options.hub, options.revision);
  const fs::path config_json = io::hub_file(source.repo, "config.json", source.revision, options.hub);
  const fs::path checkpoint = io::hub_checkpoint(source.repo, source.revision, options.hub);
  io::TensorMap tensors = io::load_safetensors(checkpoint).tensors;
  for (const auto& [name, tensor] : tensors) {
    if (name.ends_with(".SCB") || name.find(".quant_state.bitsandbytes__") != std::string::npos) {
      throw InvalidArgumentError(fmt::format("checkpoint {} is already quantized (it holds '{}')",
                                             checkpoint.string(), name));
    }
  }
  prepare_output_directory(outdir);

  const nn::LinearPolicy policy = family_linear_policy(source.family, format, options.keep_dense);
  const std::vector<LinearLayerPlan> layers =
      plan_linear_layers(source.family, config_json, tensors, checkpoint, policy);
  const std::map<std::string, std::string> stored = stored_names(source.family, tensors);

  QuantizeCheckpointReport report;
  for (const auto& [name, tensor] : tensors) report.bytes_before += tensor.nbytes();
  std::vector<std::pair<const LinearLayerPlan*, std::string>> to_quantize;  // layer, stored weight name
  std::vector<std::string> kept_dense;
  for (const LinearLayerPlan& layer : layers) {
    if (layer.format == Quantization::none) {
      kept_dense.push_back(layer.module);
      continue;
    }
    const auto found = stored.find(layer.module + ".weight");
    if (found == stored.end() || !found->second.ends_with(".weight")) {
      throw InvalidArgumentError(fmt::format("checkpoint {}: layer '{}' is stored as '{}', which cannot hold a "
                                             "quantized weight; keep it dense (keep_dense)",
                                             checkpoint.string(), layer.module,
                                             found == stored.end() ? std::string("?") : found->second));
    }
    to_quantize.emplace_back(&layer, found->second);
  }
  report.dense_layers = kept_dense.size();
  report.quantized_layers = to_quantize.size();

  io::TensorMap written = tensors;
  at::ScalarType compute_dtype = at::kFloat;
  for (std::size_t i = 0; i < to_quantize.size(); ++i) {
    const auto& [layer, weight_name] = to_quantize[i];
    const at::Tensor weight = written.at(weight_name);
    if (i == 0) compute_dtype = stored_dtype(tensors, weight_name);
    written.erase(weight_name);
    // The stored bias stays as it is; the weight becomes bitsandbytes' tensors under the same prefix.
    const std::string prefix = weight_name.substr(0, weight_name.size() - std::string_view("weight").size());
    try {
      for (auto& [key, value] : quant::QuantizedLinear::from_dense(weight, std::nullopt, format).state_dict(prefix)) {
        written.insert_or_assign(key, value);
      }
    } catch (const c10::Error& e) {
      throw CheckpointError(fmt::format("checkpoint {}: layer '{}' cannot be quantized: {}", checkpoint.string(),
                                        layer->module, e.what_without_backtrace()));
    }
    if (options.on_layer) options.on_layer(i + 1, to_quantize.size(), layer->module);
  }
  for (const auto& [name, tensor] : written) report.bytes_after += tensor.nbytes();

  // Side files first (small), the weights last: a directory with model.safetensors is complete.
  const fs::path source_directory = config_json.parent_path();
  for (const std::string_view name : kModelSideFiles) {
    try {
      (void)io::optional_hub_file(source.repo, name, source.revision, options.hub);  // fetched into the snapshot
    } catch (const CheckpointError&) {
      // Offline with a cache that never recorded this optional file: copy what the snapshot has.
    }
  }
  try {
    for (const fs::directory_entry& entry : fs::directory_iterator(source_directory)) {
      const fs::path name = entry.path().filename();
      if (!entry.is_regular_file() || is_weight_file(name) || name == "config.json" || name.string().starts_with(".")) {
        continue;
      }
      report.files.push_back(outdir / name);
      std::error_code error;
      fs::copy_file(entry.path(), outdir / name, fs::copy_options::overwrite_existing, error);
      if (error) {
        throw CheckpointError(fmt::format("cannot copy {} to {}: {}", entry.path().string(), outdir.string(),
                                          error.message()));
      }
    }
    nlohmann::json config = io::detail::read_json_file(config_json, "model config");
    config["quantization_config"] = quantization_config(format, compute_dtype, policy.keep_dense);
    report.files.push_back(outdir / "config.json");
    write_text(outdir / "config.json", config.dump(2) + "\n");
    report.files.push_back(outdir / "model.safetensors");
    io::save_safetensors(written, outdir / "model.safetensors", {{"format", "pt"}});
  } catch (...) {
    // Leave no partial checkpoint behind (and the directory empty, so the command can simply be run again).
    std::error_code ignored;
    for (const fs::path& path : report.files) fs::remove(path, ignored);
    throw;
  }
  return report;
}

std::optional<DeclaredQuantization> declared_quantization(const fs::path& config_json) {
  const nlohmann::json config = io::detail::read_json_file(config_json, "model config");
  const auto found = config.find("quantization_config");
  if (found == config.end() || !found->is_object()) return std::nullopt;
  const detail::ConfigReader reader(*found, config_json, "quantization_config");
  if (reader.get<std::string>("quant_method", "bitsandbytes") != "bitsandbytes") return std::nullopt;
  DeclaredQuantization declared{Quantization::none, std::nullopt};
  if (reader.get<bool>("load_in_4bit", false)) {
    const auto type = reader.get<std::string>("bnb_4bit_quant_type", "fp4");
    if (type != "nf4" && type != "fp4") reader.fail("bnb_4bit_quant_type", "must be 'nf4' or 'fp4', is '" + type + "'");
    declared.format = type == "nf4" ? Quantization::nf4 : Quantization::fp4;
  } else if (reader.get<bool>("load_in_8bit", false)) {
    declared.format = Quantization::int8;
  } else {
    return std::nullopt;
  }
  declared.keep_dense = reader.optional<std::vector<std::string>>("llm_int8_skip_modules");
  return declared;
}

}  // namespace imagetotext
