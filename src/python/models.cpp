// imagetotext._C's models: Captioner, model_selector, load_model and the process-wide weight cache.
// Every call that can take time (loading, downloading, captioning) runs with the GIL released.
#include <pybind11/stl.h>
#include <pybind11/stl/filesystem.h>
#include <torch/extension.h>

#include <chrono>
#include <cstring>

#include "bindings.hpp"
#include "imagetotext/core/error.hpp"
#include "imagetotext/image_to_text.hpp"
#include "imagetotext/models/checkpoint_tools.hpp"

namespace py = pybind11;

namespace imagetotext::python {
namespace {

// A Python callable the native side keeps inside ModelOptions, which may be copied and dropped on threads
// that do not hold the GIL: every touch of the callable takes the GIL first.
std::function<void(const io::HubDownloadProgress&)> native_progress(py::object callback) {
  std::shared_ptr<py::object> held(new py::object(std::move(callback)), [](py::object* object) {
    if (!Py_IsInitialized()) return;  // at exit: leak it rather than touch a finalized interpreter
    py::gil_scoped_acquire acquire;
    delete object;
  });
  return [held](const io::HubDownloadProgress& progress) {
    py::gil_scoped_acquire acquire;  // called from the download, which runs without the GIL
    (*held)(progress.filename, progress.received, progress.total);
  };
}

ModelOptions make_options(const std::string& device, const std::string& dtype,
                          const std::optional<std::string>& quantization, const std::string& checkpoint,
                          int64_t max_new_tokens, std::optional<double> test_delay, int64_t max_pixels,
                          const std::optional<std::filesystem::path>& cache_dir, const py::object& progress,
                          std::optional<std::vector<std::string>> keep_dense = std::nullopt) {
  ModelOptions options;
  options.keep_dense = std::move(keep_dense);
  options.device = device;
  options.dtype = dtype;
  if (quantization) options.quantization = parse_quantization(*quantization);
  options.checkpoint = checkpoint;
  if (max_new_tokens < 0) throw InvalidArgumentError("max_new_tokens must be >= 0 (0: the model's default)");
  options.max_new_tokens = max_new_tokens;
  if (test_delay) {
    if (*test_delay < 0) throw InvalidArgumentError("test_delay must be >= 0 seconds");
    options.test_delay = std::chrono::milliseconds(static_cast<int64_t>(*test_delay * 1000.0 + 0.5));
  }
  options.image.max_pixels = max_pixels;
  if (cache_dir) options.hub.cache_dir = *cache_dir;
  if (!progress.is_none()) options.hub.on_progress = native_progress(progress);
  return options;
}

// What caption() accepts: a path (str or os.PathLike), a uint8 [H, W, 3] tensor, or a PIL image.
struct ImageArgument {
  std::optional<std::filesystem::path> path;
  std::optional<io::RgbImage> image;
};

ImageArgument image_argument(const py::handle& image) {
  if (THPVariable_Check(image.ptr())) return {std::nullopt, io::rgb_image_from_pixels(THPVariable_Unpack(image.ptr()), "image")};
  if (py::isinstance<py::str>(image) || py::hasattr(image, "__fspath__")) {
    return {py::module_::import("os").attr("fspath")(image).cast<std::filesystem::path>(), std::nullopt};
  }
  if (py::hasattr(image, "convert") && py::hasattr(image, "tobytes") && py::hasattr(image, "size")) {
    const py::object rgb = image.attr("convert")("RGB");
    const auto [width, height] = rgb.attr("size").cast<std::pair<int64_t, int64_t>>();
    const std::string bytes = rgb.attr("tobytes")().cast<std::string>();
    at::Tensor pixels = at::empty({height, width, 3}, at::kByte);
    if (static_cast<int64_t>(bytes.size()) != pixels.numel()) throw InvalidArgumentError("caption: a PIL image whose bytes do not match its size");
    std::memcpy(pixels.data_ptr(), bytes.data(), bytes.size());
    std::string name = "image";
    if (py::hasattr(image, "filename")) {
      const auto filename = py::str(image.attr("filename")).cast<std::string>();
      if (!filename.empty()) name = std::filesystem::path(filename).stem().string();
    }
    return {std::nullopt, io::RgbImage{pixels, name}};
  }
  throw InvalidArgumentError("caption: the image must be a path, a uint8 tensor [height, width, 3] or a PIL image, not " +
                             py::str(py::type::of(image).attr("__name__")).cast<std::string>());
}

std::vector<std::filesystem::path> download_checkpoint(const std::string& repo, const std::string& revision,
                                                       const io::HubOptions& options) {
  std::vector<std::filesystem::path> files{io::hub_file(repo, "config.json", revision, options)};
  for (const std::string_view name : kModelSideFiles) {
    if (auto path = io::optional_hub_file(repo, name, revision, options)) files.push_back(*path);
  }
  files.push_back(io::hub_checkpoint(repo, revision, options));
  return files;
}

py::list cache_rows() {
  py::list rows;
  for (const CachedModelInfo& info : ModelCache::instance().entries()) {
    py::dict row;
    row["name"] = info.name;
    row["key"] = info.key;
    row["loaded"] = info.loaded;
    rows.append(row);
  }
  return rows;
}

}  // namespace

void bind_models(py::module_& m) {
  py::class_<Captioner>(m, "Captioner", "A model as the service uses it: download() then extract(image_path).")
      .def_property_readonly("name", [](const Captioner& c) { return std::string(c.name()); },
                             "The registry name, e.g. 'Florence-2-base' (the checkpoint, for load_model).")
      .def_property_readonly("model_id", [](const Captioner& c) { return std::string(c.model_id()); },
                             "The Hugging Face hub id ('test-dummy-model' for the test model).")
      .def_property_readonly("revision", [](const Captioner& c) { return std::string(c.revision()); },
                             "The hub revision that is downloaded.")
      .def_property_readonly("family", [](const Captioner& c) { return std::string(family_name(c.spec().family)); },
                             "The model family: 'test', 'Florence-2', 'SmolVLM' or 'moondream2'.")
      .def_property_readonly("quantization",
                             [](const Captioner& c) { return std::string(quantization_name(c.spec().quantization)); },
                             "'none', 'int8', 'llm_int8', 'nf4' or 'fp4'.")
      .def_property_readonly("downloaded", &Captioner::downloaded,
                             "Whether this object holds loaded weights (download() or a first extract() sets it).")
      .def("download", &Captioner::download, py::call_guard<py::gil_scoped_release>(),
           "Load the weights, downloading them if needed, or take them from the process-wide cache when another "
           "object already loaded them. Calling it again does nothing.")
      .def("extract", py::overload_cast<const std::filesystem::path&>(&Captioner::extract), py::arg("image_path"),
           py::call_guard<py::gil_scoped_release>(),
           "Caption an image file (loads the model on first use). Returns the caption.")
      .def(
          "extract_pixels",
          [](Captioner& c, const at::Tensor& pixels, const std::string& name) {
            io::RgbImage image = io::rgb_image_from_pixels(pixels, name);
            py::gil_scoped_release release;
            return c.extract(image);
          },
          py::arg("pixels"), py::arg("name") = "image",
          "Caption decoded pixels: a uint8 tensor [height, width, 3] in RGB order.")
      .def("extract_batch", py::overload_cast<const std::vector<std::filesystem::path>&>(&Captioner::extract_batch),
           py::arg("image_paths"), py::call_guard<py::gil_scoped_release>(),
           "Caption several image files in one turn of the model; captions come back in the same order. Every "
           "file is decoded first, so a bad one raises (naming it) before the model runs.")
      .def(
          "extract_pixels_batch",
          [](Captioner& c, const std::vector<at::Tensor>& pixels, std::optional<std::vector<std::string>> names) {
            if (names && names->size() != pixels.size()) {
              throw InvalidArgumentError("extract_pixels_batch: " + std::to_string(names->size()) + " names for " +
                                         std::to_string(pixels.size()) + " images");
            }
            std::vector<io::RgbImage> images;
            for (std::size_t i = 0; i < pixels.size(); ++i) {
              images.push_back(io::rgb_image_from_pixels(pixels[i], names ? (*names)[i] : "image"));
            }
            py::gil_scoped_release release;
            return c.extract_batch(images);
          },
          py::arg("pixels"), py::arg("names") = py::none(),
          "Caption several decoded images (uint8 tensors [height, width, 3]) in one turn of the model.")
      .def(
          "caption",
          [](Captioner& c, const py::object& image, int64_t max_new_tokens) {
            if (max_new_tokens < 0) throw InvalidArgumentError("max_new_tokens must be >= 0 (0: the model's default)");
            const CaptionOptions options{max_new_tokens};
            ImageArgument argument = image_argument(image);
            py::gil_scoped_release release;
            return argument.path ? c.extract(*argument.path, options) : c.extract(*argument.image, options);
          },
          py::arg("image"), py::arg("max_new_tokens") = 0,
          "Caption one image: a path, a uint8 tensor [height, width, 3] (RGB) or a PIL image. max_new_tokens=0 "
          "keeps the model's setting.")
      .def("__repr__", [](const Captioner& c) {
        return "<imagetotext model '" + std::string(c.name()) + "' (" + std::string(c.model_id()) + ", " +
               std::string(quantization_name(c.spec().quantization)) + ")>";
      });

  m.def(
      "model_selector",
      [](const std::string& name, const std::string& device, const std::string& dtype,
         std::optional<std::string> quantization, const std::string& checkpoint, int64_t max_new_tokens,
         std::optional<double> test_delay, int64_t max_pixels, std::optional<std::filesystem::path> cache_dir,
         py::object progress, std::optional<std::vector<std::string>> keep_dense) {
        return model_selector(name, make_options(device, dtype, quantization, checkpoint, max_new_tokens, test_delay,
                                                 max_pixels, cache_dir, progress, std::move(keep_dense)));
      },
      py::arg("model_name"), py::arg("device") = "auto", py::arg("dtype") = "auto",
      py::arg("quantization") = py::none(), py::arg("checkpoint") = "", py::arg("max_new_tokens") = 0,
      py::arg("test_delay") = py::none(), py::arg("max_image_pixels") = io::kDefaultMaxImagePixels,
      py::arg("cache_dir") = py::none(), py::arg("progress") = py::none(), py::arg("keep_dense") = py::none(),
      "Build the model registered under model_name (see imagetotext.model_selector).");

  m.def(
      "load_model",
      [](const std::string& checkpoint, const std::string& revision, const std::string& device,
         const std::string& dtype, std::optional<std::string> quantization, int64_t max_new_tokens, int64_t max_pixels,
         std::optional<std::filesystem::path> cache_dir, py::object progress,
         std::optional<std::vector<std::string>> keep_dense) {
        ModelOptions options = make_options(device, dtype, quantization, "", max_new_tokens, std::nullopt, max_pixels,
                                            cache_dir, progress, std::move(keep_dense));
        py::gil_scoped_release release;  // reads (maybe downloads) config.json
        return load_model(checkpoint, std::move(options), revision);
      },
      py::arg("checkpoint"), py::arg("revision") = "main", py::arg("device") = "auto", py::arg("dtype") = "auto",
      py::arg("quantization") = py::none(), py::arg("max_new_tokens") = 0,
      py::arg("max_image_pixels") = io::kDefaultMaxImagePixels, py::arg("cache_dir") = py::none(),
      py::arg("progress") = py::none(), py::arg("keep_dense") = py::none(),
      "A model for a checkpoint directory or hub id (see imagetotext.load_model).");

  m.def(
      "download_checkpoint",
      [](const std::string& repo, const std::string& revision, std::optional<std::filesystem::path> cache_dir,
         py::object progress) {
        io::HubOptions options;
        if (cache_dir) options.cache_dir = *cache_dir;
        if (!progress.is_none()) options.on_progress = native_progress(progress);
        py::gil_scoped_release release;
        return download_checkpoint(repo, revision, options);
      },
      py::arg("repo_id"), py::arg("revision") = "main", py::arg("cache_dir") = py::none(),
      py::arg("progress") = py::none(),
      "Fetch a model's config.json, its safetensors checkpoint (every shard) and the processor, tokenizer and "
      "generation files it has into the hub cache; returns their local paths.");

  m.def(
      "unload", [](const std::string& name) { return ModelCache::instance().unload(name); }, py::arg("name"),
      py::call_guard<py::gil_scoped_release>(),
      "Free the cached weights of every variant of `name`; returns how many were loaded.");
  m.def(
      "clear_cache", [] { return ModelCache::instance().clear(); }, py::call_guard<py::gil_scoped_release>(),
      "Free every cached model; returns how many were loaded.");
  m.def("cache_info", &cache_rows, "One dict per cached model: name, key and loaded.");
  m.def(
      "load_count", [] { return ModelCache::instance().loads(); },
      "How many times this process loaded weights (any model).");
}

}  // namespace imagetotext::python
