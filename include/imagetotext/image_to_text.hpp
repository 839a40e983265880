// ImageToText<Family>: the interface the service calls (download, extract), written once for every model
// family. A family supplies how its weights are loaded and how one image becomes a caption (its processor,
// its network over a weight format, and its decoding strategy); this template supplies the rest: lazy
// loading on first use, decoding files, batches, thread safety and the service's attributes.
//
// model_selector(name) returns a type-erased Captioner built from the registry (models/registry.hpp).
#pragma once

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "imagetotext/core/logging.hpp"
#include "imagetotext/io/hub.hpp"
#include "imagetotext/io/image.hpp"
#include "imagetotext/models/registry.hpp"

namespace imagetotext {

// Options every family understands; each takes what applies to it.
struct ModelOptions {
  std::string device = "auto";                      // "auto", "cpu", "cuda" or "cuda:N"
  std::string dtype = "auto";                       // "auto" (bf16 on CUDA, fp32 on CPU), "float32", ...
  std::string checkpoint;                           // empty: the registry's hub id; else a directory or hub id
  std::optional<Quantization> quantization;         // unset: the registry's (llm_int8 reproduces the service)
  std::optional<std::vector<std::string>> keep_dense;  // Linear layers kept dense; unset: the family's default
  io::HubOptions hub;                               // cache, endpoint, token, download progress
  std::int64_t max_new_tokens = 0;                  // 0: the family's default (the service's setting)
  std::chrono::milliseconds test_delay{1000};       // the `test` model's sleep per image, as in the service
  io::ImageLoadOptions image;                       // pixel limit for decoded files
};

// What every model looks like to the service: model_selector's return type.
class Captioner {
 public:
  virtual ~Captioner() = default;

  virtual const ModelSpec& spec() const noexcept = 0;
  // Loads the weights (downloading them if needed). Idempotent.
  virtual void download() = 0;
  virtual bool downloaded() const = 0;
  // Captions an image file; loads the model first if download() was not called.
  virtual std::string extract(const std::filesystem::path& image_path) = 0;
  // Captions pixels the caller decoded.
  virtual std::string extract(const io::RgbImage& image) = 0;
  // Captions several files; the result is in the order of `image_paths`.
  virtual std::vector<std::string> extract_batch(const std::vector<std::filesystem::path>& image_paths) = 0;

  // The service's attributes.
  std::string_view name() const noexcept { return spec().name; }
  std::string_view model_id() const noexcept { return spec().repo_id; }
  std::string_view revision() const noexcept { return spec().revision; }
};

// A family F provides:
//   typename F::Model;                                                  the loaded weights and state
//   static F::Model load(const ModelSpec&, const ModelOptions&);        read (and download) a checkpoint
//   static std::string caption(F::Model&, const io::RgbImage&);         one image to one caption
template <class Family>
class ImageToText final : public Captioner {
 public:
  using Model = typename Family::Model;

  explicit ImageToText(const ModelSpec& spec, ModelOptions options = {}) : spec_(spec), options_(std::move(options)) {}

  const ModelSpec& spec() const noexcept override { return spec_; }

  void download() override {
    std::lock_guard<std::mutex> lock(mutex_);
    loaded_model();
  }

  bool downloaded() const override {
    std::lock_guard<std::mutex> lock(mutex_);
    return model_.has_value();
  }

  std::string extract(const std::filesystem::path& image_path) override {
    return extract(io::load_rgb_image(image_path, options_.image));  // decode outside the lock
  }

  std::string extract(const io::RgbImage& image) override {
    // One request at a time per model: callers on several threads are served in turn, never mixed.
    std::lock_guard<std::mutex> lock(mutex_);
    return Family::caption(loaded_model(), image);
  }

  std::vector<std::string> extract_batch(const std::vector<std::filesystem::path>& image_paths) override {
    std::vector<std::string> captions;
    captions.reserve(image_paths.size());
    for (const auto& path : image_paths) captions.push_back(extract(path));
    return captions;
  }

 private:
  Model& loaded_model() {
    if (!model_) {
      log_info("loading model '{}' ({})", spec_.name, spec_.repo_id);
      model_.emplace(Family::load(spec_, options_));
    }
    return *model_;
  }

  ModelSpec spec_;  // a copy: string views into the static registry, or into storage the caller keeps
  ModelOptions options_;
  mutable std::mutex mutex_;
  std::optional<Model> model_;
};

// Builds the model registered under `name`. Throws UnknownModelError (the message lists the valid names),
// ModelNotImplementedError for a registered model whose family this build does not have yet, or
// InvalidArgumentError for a device that is not "auto", "cpu", "cuda" or "cuda:N".
std::unique_ptr<Captioner> model_selector(std::string_view name, const ModelOptions& options = {});

}  // namespace imagetotext
