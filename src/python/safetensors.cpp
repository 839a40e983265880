// Python face of io/safetensors.hpp; python/imagetotext/safetensors.py wraps it with safetensors.torch's
// signatures. Reading, device moves and writing run with the GIL released.
#include <pybind11/stl.h>
#include <pybind11/stl/filesystem.h>
#include <torch/extension.h>

#include "bindings.hpp"
#include "imagetotext/core/error.hpp"
#include "imagetotext/io/safetensors.hpp"

namespace py = pybind11;

namespace imagetotext::python {
namespace {

c10::Device parse_device(const std::string& device) {
  try {
    return c10::Device(device);
  } catch (const c10::Error&) {
    throw InvalidArgumentError("not a device: '" + device + "' (expected e.g. 'cpu', 'cuda' or 'cuda:0')");
  }
}

}  // namespace

void bind_safetensors(py::module_& m) {
  m.def(
      "load_safetensors",
      [](const std::filesystem::path& path, const std::string& device) {
        const c10::Device target = parse_device(device);
        py::gil_scoped_release release;
        io::Checkpoint checkpoint = io::load_safetensors(path);
        for (auto& [name, tensor] : checkpoint.tensors) tensor = io::to_device(tensor, target);
        return std::make_pair(std::move(checkpoint.tensors), std::move(checkpoint.metadata));
      },
      py::arg("path"), py::arg("device") = "cpu",
      "Read a .safetensors file, a sharded checkpoint's .index.json, or a directory holding either: "
      "(tensors, metadata). On the CPU the tensors alias the memory-mapped file. Raises CheckpointError "
      "naming the file (and the tensor) for an invalid checkpoint.");
  m.def(
      "save_safetensors",
      [](const io::TensorMap& tensors, const std::filesystem::path& path, const io::MetadataMap& metadata) {
        py::gil_scoped_release release;
        io::save_safetensors(tensors, path, metadata);
      },
      py::arg("tensors"), py::arg("path"), py::arg("metadata") = io::MetadataMap{},
      "Write tensors as safetensors with the layout the safetensors library writes, through path + "
      "'.incomplete' renamed when complete.");
}

}  // namespace imagetotext::python
