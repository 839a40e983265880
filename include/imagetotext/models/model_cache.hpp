// The process-wide cache of loaded models. The service builds a new model object and calls download() for
// every job; with this cache only the first job of a (checkpoint, device, dtype, quantization, options) key
// loads weights, and every later object with that key shares them. A cached model also owns the mutex that
// serializes requests to it, so two objects sharing weights never run them at the same time.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

namespace imagetotext {

// One cache entry: the weights of one key, loaded at most once, freed by unload.
class CachedModel {
 public:
  virtual ~CachedModel() = default;

  std::mutex mutex;                  // held while loading and while captioning
  std::atomic<bool> loaded{false};   // the weights are in memory
  std::atomic<bool> evicted{false};  // unloaded: holders must fetch a fresh entry from the cache

  // Frees the weights (called with `mutex` held).
  virtual void release() = 0;
};

struct CachedModelInfo {
  std::string name;  // the registry name, or the checkpoint load_model was given
  std::string key;   // everything the weights depend on
  bool loaded = false;
};

class ModelCache {
 public:
  static ModelCache& instance();

  // The entry for `key`, made by `make` if the cache has none.
  std::shared_ptr<CachedModel> entry(const std::string& key, std::string_view name,
                                     const std::function<std::shared_ptr<CachedModel>()>& make);

  // Frees every entry whose name is `name`; returns how many were loaded. Objects that used them load
  // again on their next request.
  std::size_t unload(std::string_view name);
  // Frees every entry; returns how many were loaded.
  std::size_t clear();

  std::vector<CachedModelInfo> entries() const;

  // How many times weights were loaded in this process (every family, every key): a service that reuses
  // the cache sees this stay put from its second job on.
  std::uint64_t loads() const noexcept { return loads_.load(); }
  void count_load() noexcept { ++loads_; }

 private:
  std::size_t evict(const std::function<bool(const CachedModelInfo&)>& matches);

  struct Row {
    CachedModelInfo info;
    std::shared_ptr<CachedModel> model;
  };
  mutable std::mutex mutex_;
  std::vector<Row> rows_;
  std::atomic<std::uint64_t> loads_{0};
};

}  // namespace imagetotext
