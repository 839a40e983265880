// imagetotext._C's checkpoint tools: quantize_checkpoint (`imagetotext quantize`), weight_memory (of a
// checkpoint, or of its shapes without it) and linear_layers (`imagetotext models`). Long work runs with the GIL
// released.
#include <pybind11/functional.h>
#include <pybind11/stl.h>
#include <pybind11/stl/filesystem.h>
#include <torch/extension.h>

#include "bindings.hpp"
#include "imagetotext/core/device.hpp"
#include "imagetotext/image_to_text.hpp"
#include "imagetotext/models/checkpoint_tools.hpp"

namespace py = pybind11;

namespace imagetotext::python {
namespace {

io::HubOptions hub_options(const std::optional<std::filesystem::path>& cache_dir, std::optional<bool> offline) {
  io::HubOptions options;
  if (cache_dir) options.cache_dir = *cache_dir;
  options.offline = offline;
  return options;
}

// A checkpoint's family, config and tensors, as the tools read them.
struct OpenedCheckpoint {
  CheckpointSource source;
  std::filesystem::path config_json;
  std::filesystem::path checkpoint;
  io::TensorMap tensors;
};

OpenedCheckpoint open_checkpoint(const std::string& model, const std::string& revision, const io::HubOptions& hub) {
  OpenedCheckpoint opened{resolve_checkpoint(model, hub, revision), {}, {}, {}};
  opened.config_json = io::hub_file(opened.source.repo, "config.json", opened.source.revision, hub);
  opened.checkpoint = io::hub_checkpoint(opened.source.repo, opened.source.revision, hub);
  opened.tensors = io::load_safetensors(opened.checkpoint).tensors;  // mapped, not read
  return opened;
}

}  // namespace

void bind_checkpoint_tools(py::module_& m) {
  m.def(
      "quantize_checkpoint",
      [](const std::string& model, const std::string& to, const std::filesystem::path& outdir,
         std::optional<std::vector<std::string>> keep_dense, const std::string& revision,
         std::optional<std::filesystem::path> cache_dir, std::optional<bool> offline,
         std::function<void(std::size_t, std::size_t, std::string)> on_layer) {
        QuantizeCheckpointOptions options;
        options.keep_dense = std::move(keep_dense);
        options.revision = revision;
        options.hub = hub_options(cache_dir, offline);
        if (on_layer) {
          options.on_layer = [on_layer](std::size_t done, std::size_t total, const std::string& module) {
            py::gil_scoped_acquire acquire;  // called from the quantization, which runs without the GIL
            on_layer(done, total, module);
          };
        }
        const Quantization format = parse_quantization(to);
        QuantizeCheckpointReport report;
        {
          py::gil_scoped_release release;
          report = quantize_checkpoint(model, format, outdir, options);
        }
        py::dict result;
        result["quantized_layers"] = report.quantized_layers;
        result["dense_layers"] = report.dense_layers;
        result["bytes_before"] = report.bytes_before;
        result["bytes_after"] = report.bytes_after;
        result["files"] = report.files;
        return result;
      },
      py::arg("model"), py::arg("to"), py::arg("outdir"), py::arg("keep_dense") = py::none(),
      py::arg("revision") = "", py::arg("cache_dir") = py::none(), py::arg("offline") = py::none(),
      py::arg("on_layer") = py::none(),
      "Write a pre-quantized checkpoint (see imagetotext.quantize_checkpoint); returns a report dict.");

  m.def(
      "linear_layers",
      [](const std::string& model, const std::string& quantization, std::optional<std::vector<std::string>> keep_dense,
         const std::string& revision, std::optional<std::filesystem::path> cache_dir, std::optional<bool> offline) {
        const OpenedCheckpoint opened = open_checkpoint(model, revision, hub_options(cache_dir, offline));
        const nn::LinearPolicy policy =
            family_linear_policy(opened.source.family, parse_quantization(quantization), keep_dense);
        py::list rows;
        for (const LinearLayerPlan& layer :
             plan_linear_layers(opened.source.family, opened.config_json, opened.tensors, opened.checkpoint, policy)) {
          rows.append(py::make_tuple(layer.module, std::string(quantization_name(layer.format)), layer.out_features,
                                     layer.in_features));
        }
        return rows;
      },
      py::arg("model"), py::arg("quantization"), py::arg("keep_dense") = py::none(), py::arg("revision") = "",
      py::arg("cache_dir") = py::none(), py::arg("offline") = py::none(),
      "The Linear layers the model builds from its checkpoint with that quantization: (name, format, "
      "out_features, in_features) in load order, decided by the family's own policy.");

  m.def(
      "weight_memory",
      [](const std::string& model, const std::string& quantization, std::optional<std::vector<std::string>> keep_dense,
         const std::string& dtype, const std::string& revision, std::optional<std::filesystem::path> cache_dir,
         std::optional<bool> offline) {
        const OpenedCheckpoint opened = open_checkpoint(model, revision, hub_options(cache_dir, offline));
        const nn::LinearPolicy policy =
            family_linear_policy(opened.source.family, parse_quantization(quantization), keep_dense);
        return weight_memory(opened.source.family, opened.config_json, opened.tensors, opened.checkpoint, policy,
                             resolve_dtype(dtype, c10::Device(c10::kCPU)));
      },
      py::arg("model"), py::arg("quantization"), py::arg("keep_dense") = py::none(), py::arg("dtype") = "bfloat16",
      py::arg("revision") = "", py::arg("cache_dir") = py::none(), py::arg("offline") = py::none(),
      "Bytes of the model's weights once loaded with that quantization, floating tensors in dtype: every "
      "tensor it reads, Linear layers in their quantized layout.");

  m.def(
      "weight_memory_of_tensors",
      [](const std::filesystem::path& directory, const io::TensorMap& tensors, const std::string& quantization,
         std::optional<std::vector<std::string>> keep_dense, const std::string& dtype) {
        // `directory` holds the config.json; `tensors` (meta tensors) stand for its checkpoint's.
        const CheckpointSource source = resolve_checkpoint(directory.string(), io::HubOptions{});
        const nn::LinearPolicy policy =
            family_linear_policy(source.family, parse_quantization(quantization), keep_dense);
        return weight_memory(source.family, directory / "config.json", tensors, directory, policy,
                             resolve_dtype(dtype, c10::Device(c10::kCPU)));
      },
      py::arg("directory"), py::arg("tensors"), py::arg("quantization"), py::arg("keep_dense") = py::none(),
      py::arg("dtype") = "bfloat16",
      "weight_memory for the checkpoint whose config.json is in directory and whose tensors are given (name -> "
      "tensor; meta tensors suffice: only shapes and dtypes are read).");
}

}  // namespace imagetotext::python
