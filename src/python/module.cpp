// imagetotext._C: the Python face of the C++ library. Tensors cross through torch's own pybind11 casters;
// tensor ops are reached as torch.ops.imagetotext.* (registered by libimagetotext itself). Native work
// runs with the GIL released, and every C++ error type becomes the matching Python exception.
#include <pybind11/stl.h>
#include <pybind11/stl/filesystem.h>
#include <torch/extension.h>

#include <cerrno>

#include "bindings.hpp"
#include "imagetotext/core/error.hpp"
#include "imagetotext/core/logging.hpp"
#include "imagetotext/image_to_text.hpp"
#include "imagetotext/io/image.hpp"
#include "bindings.hpp"

namespace py = pybind11;
using namespace imagetotext;

namespace {

// The Python exception classes live in imagetotext/errors.py (so each can derive from both
// ImageToTextError and the built-in it stands for); this maps C++ types onto them.
void register_error_translation() {
  static const py::handle errors = py::module_::import("imagetotext.errors").release();
  py::register_exception_translator([](std::exception_ptr thrown) {
    auto raise = [](const char* cls, const std::exception& e) {
      PyErr_SetString(errors.attr(cls).ptr(), e.what());
    };
    try {
      std::rethrow_exception(thrown);
    } catch (const FileNotFoundError& e) {
      // Like open(): FileNotFoundError(errno, message, filename), so .filename is set.
      const py::object error = errors.attr("ImageNotFoundError")(ENOENT, e.reason(), e.path().string());
      PyErr_SetObject(errors.attr("ImageNotFoundError").ptr(), error.ptr());
    } catch (const ImageError& e) {
      raise("ImageError", e);
    } catch (const UnknownModelError& e) {
      raise("UnknownModelError", e);
    } catch (const ModelNotImplementedError& e) {
      raise("ModelNotImplementedError", e);
    } catch (const CheckpointError& e) {
      raise("CheckpointError", e);
    } catch (const DeviceError& e) {
      raise("DeviceError", e);
    } catch (const InvalidArgumentError& e) {
      raise("InvalidArgumentError", e);
    } catch (const Error& e) {
      raise("ImageToTextError", e);
    }
  });
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "Native core of imagetotext: model selection, image decoding and captioning.";
  register_error_translation();

  m.attr("default_model") = std::string(kDefaultModel);
  m.attr("max_image_pixels") = io::kDefaultMaxImagePixels;
  m.attr("file_decoding_available") = io::file_decoding_available();

  m.def("available_models", &available_models, "Every model name model_selector accepts, in the service's order.");
  m.def(
      "model_registry",
      [] {
        py::list rows;
        for (const ModelSpec& spec : model_registry()) {
          py::dict row;
          row["name"] = std::string(spec.name);
          row["family"] = std::string(family_name(spec.family));
          row["repo_id"] = std::string(spec.repo_id);
          row["revision"] = std::string(spec.revision);
          row["quantization"] = std::string(quantization_name(spec.quantization));
          rows.append(row);
        }
        return rows;
      },
      "The registry table: one dict per model with name, family, repo_id, revision and quantization.");

  python::bind_models(m);  // models.cpp: Captioner, model_selector, load_model, the weight cache

  m.def(
      "load_rgb_image",
      [](const std::filesystem::path& path, int64_t max_pixels) {
        io::ImageLoadOptions options;
        options.max_pixels = max_pixels;
        py::gil_scoped_release release;
        return io::load_rgb_image(path, options).pixels;
      },
      py::arg("path"), py::arg("max_pixels") = io::kDefaultMaxImagePixels,
      "Decode an image file as the service's load_rgb_image does: a uint8 tensor [height, width, 3], RGB.");

  m.def(
      "probe_image",
      [](py::bytes data, const std::string& name) {
        const std::string_view view = data;
        const io::ImageInfo info = io::probe_image(
            std::span(reinterpret_cast<const std::uint8_t*>(view.data()), view.size()), name);
        return py::make_tuple(std::string(io::format_name(info.format)), info.width, info.height);
      },
      py::arg("data"), py::arg("name") = "<bytes>",
      "Read (format, width, height) from an encoded image's header without decoding it.");

  python::bind_configs(m);
  python::bind_hub(m);
  python::bind_quant(m);
  python::bind_quantized_linear(m);
  python::bind_safetensors(m);
  python::bind_tokenizer(m);
  python::bind_smolvlm(m);
  python::bind_florence2(m);  // after bind_tokenizer: its signatures name imagetotext.Tokenizer
  python::bind_checkpoint_tools(m);

  m.def(
      "set_log_level", [](const std::string& level) { set_log_level(parse_log_level(level)); }, py::arg("level"),
      "Set the native log level: 'debug', 'info', 'warning', 'error' or 'off'.");
}
