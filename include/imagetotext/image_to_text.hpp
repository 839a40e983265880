// ImageToText<Family>: the interface the service calls (download, extract), written once for every model
// family. A family supplies how its weights are loaded and how one image becomes a caption (its processor,
// its network over a weight format, and its decoding strategy); this template supplies the rest: lazy
// loading on first use, weights shared through the process-wide cache (models/model_cache.hpp), decoding
// files, batches, thread safety, out-of-memory handling and the service's attributes.
//
// model_selector(name) returns a type-erased Captioner built from the registry (models/registry.hpp);
// load_model(checkpoint) builds one for any checkpoint whose config.json names a supported family.
#pragma once

#include <c10/util/Exception.h>

#include <chrono>
#include <concepts>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <typeinfo>
#include <vector>

#include "imagetotext/core/error.hpp"
#include "imagetotext/core/logging.hpp"
#include "imagetotext/io/hub.hpp"
#include "imagetotext/io/image.hpp"
#include "imagetotext/models/model_cache.hpp"
#include "imagetotext/models/registry.hpp"

namespace imagetotext {

// Options every family understands; each takes what applies to it. Every field that can change the
// loaded weights is part of the cache key (model_cache_key), so objects share weights only when equal.
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

// Per-request settings, for families that take them (see the optional hooks below).
struct CaptionOptions {
  std::int64_t max_new_tokens = 0;  // 0: the model's (ModelOptions::max_new_tokens or the family default)
};

// What every model looks like to the service: model_selector's return type.
class Captioner {
 public:
  virtual ~Captioner() = default;

  virtual const ModelSpec& spec() const noexcept = 0;
  // Loads the weights (downloading them if needed), or takes them from the cache. Idempotent.
  virtual void download() = 0;
  virtual bool downloaded() const = 0;
  // Captions an image file; loads the model first if download() was not called.
  virtual std::string extract(const std::filesystem::path& image_path) = 0;
  // Captions pixels the caller decoded.
  virtual std::string extract(const io::RgbImage& image) = 0;
  // Captions a file or pixels with per-request settings. Throws InvalidArgumentError for a setting the family fixes
  // at load time (then pass it in ModelOptions instead).
  virtual std::string extract(const io::RgbImage& image, const CaptionOptions& options) = 0;
  virtual std::string extract(const std::filesystem::path& image_path, const CaptionOptions& options) = 0;
  // Captions several files; the result is in the order of `image_paths`. Every file is decoded before any
  // is captioned, so a bad file throws (naming it) before the model runs.
  virtual std::vector<std::string> extract_batch(const std::vector<std::filesystem::path>& image_paths) = 0;
  virtual std::vector<std::string> extract_batch(const std::vector<io::RgbImage>& images) = 0;

  // The service's attributes.
  std::string_view name() const noexcept { return spec().name; }
  std::string_view model_id() const noexcept { return spec().repo_id; }
  std::string_view revision() const noexcept { return spec().revision; }
};

// The Quantization named `name` ("none", "int8", "llm_int8", "nf4", "fp4"); InvalidArgumentError otherwise.
Quantization parse_quantization(std::string_view name);

// The cache key of a model: family, checkpoint and revision, resolved device and dtype, quantization, and
// the options a family may bake into its weights. Throws InvalidArgumentError / DeviceError as
// resolve_device and resolve_dtype do.
std::string model_cache_key(const ModelSpec& spec, const ModelOptions& options);

// A family F provides:
//   typename F::Model;                                                  the loaded weights and state
//   static F::Model load(const ModelSpec&, const ModelOptions&);        read (and download) a checkpoint
//   static std::string caption(F::Model&, const io::RgbImage&);         one image to one caption
// and may provide (optional hooks, used when present):
//   static std::vector<std::string> caption_batch(F::Model&, const std::vector<io::RgbImage>&);
//   static std::string caption(F::Model&, const io::RgbImage&, const CaptionOptions&);
template <class F>
concept FamilyWithBatch = requires(typename F::Model& model, const std::vector<io::RgbImage>& images) {
  { F::caption_batch(model, images) } -> std::convertible_to<std::vector<std::string>>;
};
template <class F>
concept FamilyWithCaptionOptions =
    requires(typename F::Model& model, const io::RgbImage& image, const CaptionOptions& options) {
      { F::caption(model, image, options) } -> std::convertible_to<std::string>;
    };

template <class Family>
class ImageToText final : public Captioner {
 public:
  using Model = typename Family::Model;

  // Copies the spec's strings, so a spec built on the fly (load_model) may go away.
  explicit ImageToText(const ModelSpec& spec, ModelOptions options = {})
      : name_(spec.name),
        repo_id_(spec.repo_id),
        revision_(spec.revision),
        spec_{name_, spec.family, repo_id_, revision_, options.quantization.value_or(spec.quantization)},
        options_(std::move(options)) {}
  ImageToText(const ImageToText&) = delete;
  ImageToText& operator=(const ImageToText&) = delete;

  const ModelSpec& spec() const noexcept override { return spec_; }

  void download() override {
    with_model([](Model&) {});
  }

  bool downloaded() const override {
    std::lock_guard<std::mutex> lock(mutex_);
    return entry_ && entry_->loaded && !entry_->evicted;
  }

  std::string extract(const std::filesystem::path& image_path) override {
    return extract(io::load_rgb_image(image_path, options_.image));  // decode outside the model's lock
  }

  std::string extract(const io::RgbImage& image) override {
    return with_model([&](Model& model) { return Family::caption(model, image); });
  }

  std::string extract(const io::RgbImage& image, const CaptionOptions& caption_options) override {
    if constexpr (FamilyWithCaptionOptions<Family>) {
      return with_model([&](Model& model) { return Family::caption(model, image, caption_options); });
    } else {
      if (caption_options.max_new_tokens != 0 && caption_options.max_new_tokens != options_.max_new_tokens) {
        throw InvalidArgumentError("model '" + name_ +
                                   "' fixes max_new_tokens when it is loaded: pass it to model_selector or "
                                   "load_model instead of to each caption");
      }
      return extract(image);
    }
  }

  std::string extract(const std::filesystem::path& image_path, const CaptionOptions& caption_options) override {
    return extract(io::load_rgb_image(image_path, options_.image), caption_options);
  }

  std::vector<std::string> extract_batch(const std::vector<std::filesystem::path>& image_paths) override {
    std::vector<io::RgbImage> images;
    images.reserve(image_paths.size());
    for (const auto& path : image_paths) images.push_back(io::load_rgb_image(path, options_.image));
    return extract_batch(images);
  }

  std::vector<std::string> extract_batch(const std::vector<io::RgbImage>& images) override {
    // One turn of the lock for the whole batch: another thread's request never lands in the middle of it.
    return with_model([&](Model& model) {
      if constexpr (FamilyWithBatch<Family>) {
        return std::vector<std::string>(Family::caption_batch(model, images));
      } else {
        std::vector<std::string> captions;
        captions.reserve(images.size());
        for (const auto& image : images) captions.push_back(Family::caption(model, image));
        return captions;
      }
    });
  }

 private:
  struct Entry final : CachedModel {
    std::optional<Model> model;
    void release() override {
      model.reset();
      loaded = false;
    }
  };

  // The cache entry this object uses: fetched on first use, and again after unload() evicted it.
  std::shared_ptr<Entry> current_entry() {
    std::lock_guard<std::mutex> lock(mutex_);
    if (!entry_ || entry_->evicted) {
      // The C++ type too: two families sharing a key (custom ones in tests) must never share an entry.
      if (key_.empty()) key_ = std::string(typeid(Family).name()) + "|" + model_cache_key(spec_, options_);
      entry_ = std::static_pointer_cast<Entry>(
          ModelCache::instance().entry(key_, name_, [] { return std::make_shared<Entry>(); }));
    }
    return entry_;
  }

  // Runs `work` on the loaded model with the model's lock held: requests from every thread and every
  // object sharing these weights take turns, never mixed.
  template <class Work>
  auto with_model(Work&& work) {
    for (;;) {
      const std::shared_ptr<Entry> entry = current_entry();
      std::lock_guard<std::mutex> lock(entry->mutex);
      if (entry->evicted) continue;  // unloaded between fetching and locking it
      try {
        if (!entry->model) {
          log_info("loading model '{}' ({})", name_, options_.checkpoint.empty() ? repo_id_ : options_.checkpoint);
          ModelCache::instance().count_load();
          entry->model.emplace(Family::load(spec_, options_));
          entry->loaded = true;
        }
        return work(*entry->model);
      } catch (const c10::OutOfMemoryError& e) {
        // What the failed request allocated is freed as the exception unwinds; the weights stay, so the
        // next request (a smaller image, fewer tokens, or after other work frees memory) can succeed.
        throw DeviceError("out of memory running model '" + name_ + "' on " + options_.device + ": " +
                          e.what_without_backtrace());
      }
    }
  }

  std::string name_;
  std::string repo_id_;
  std::string revision_;
  ModelSpec spec_;  // views into the strings above
  ModelOptions options_;
  mutable std::mutex mutex_;  // guards key_ and entry_
  std::string key_;
  std::shared_ptr<Entry> entry_;
};

// Builds the model registered under `name`. Throws UnknownModelError (the message lists the valid names),
// ModelNotImplementedError for a registered model whose family this build does not have yet, or
// InvalidArgumentError for a device that is not "auto", "cpu", "cuda" or "cuda:N".
std::unique_ptr<Captioner> model_selector(std::string_view name, const ModelOptions& options = {});

// Builds a model of `spec`'s family (model_selector after the registry lookup; load_model for a spec it
// makes from a config.json). Same errors as model_selector.
std::unique_ptr<Captioner> make_captioner(const ModelSpec& spec, const ModelOptions& options = {});

// The model family a config.json's model_type names: idefics3 / smolvlm -> SmolVLM, florence2 ->
// Florence-2, moondream1 -> moondream2. Throws CheckpointError naming `source` for any other.
ModelFamily family_of_model_type(std::string_view model_type, std::string_view source);

// A model for any checkpoint: a local directory or a hub id (at `revision`) whose config.json names a
// supported family. The model's name and model_id are `checkpoint`; quantization defaults to none, or
// options.quantization. Throws CheckpointError for a missing or unreadable config.json or an unsupported
// model_type (each naming the checkpoint), and model_selector's errors otherwise.
std::unique_ptr<Captioner> load_model(std::string_view checkpoint, ModelOptions options = {},
                                      std::string_view revision = "main");

}  // namespace imagetotext
