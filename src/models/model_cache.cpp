#include "imagetotext/models/model_cache.hpp"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>

#include "imagetotext/core/device.hpp"
#include "imagetotext/core/error.hpp"
#include "imagetotext/image_to_text.hpp"

namespace imagetotext {

ModelCache& ModelCache::instance() {
  // Never destroyed: models may hold CUDA memory, which must not be freed after the CUDA runtime is torn
  // down at exit. clear() frees them while the process is still whole.
  static ModelCache* cache = new ModelCache;
  return *cache;
}

std::shared_ptr<CachedModel> ModelCache::entry(const std::string& key, std::string_view name,
                                               const std::function<std::shared_ptr<CachedModel>()>& make) {
  std::lock_guard<std::mutex> lock(mutex_);
  for (const Row& row : rows_) {
    if (row.info.key == key) return row.model;
  }
  rows_.push_back(Row{CachedModelInfo{std::string(name), key, false}, make()});
  return rows_.back().model;
}

std::size_t ModelCache::evict(const std::function<bool(const CachedModelInfo&)>& matches) {
  std::vector<std::shared_ptr<CachedModel>> evicted;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    auto kept = std::stable_partition(rows_.begin(), rows_.end(), [&](const Row& row) { return !matches(row.info); });
    for (auto row = kept; row != rows_.end(); ++row) evicted.push_back(row->model);
    rows_.erase(kept, rows_.end());
  }
  // Outside the cache's lock: waiting for a request in flight on one model must not block the others.
  std::size_t freed = 0;
  for (const auto& model : evicted) {
    std::lock_guard<std::mutex> lock(model->mutex);
    model->evicted = true;
    if (model->loaded) ++freed;
    model->release();
  }
  return freed;
}

std::size_t ModelCache::unload(std::string_view name) {
  return evict([&](const CachedModelInfo& info) { return info.name == name; });
}

std::size_t ModelCache::clear() {
  return evict([](const CachedModelInfo&) { return true; });
}

std::vector<CachedModelInfo> ModelCache::entries() const {
  std::lock_guard<std::mutex> lock(mutex_);
  std::vector<CachedModelInfo> infos;
  for (const Row& row : rows_) {
    infos.push_back(row.info);
    infos.back().loaded = row.model->loaded;
  }
  return infos;
}

Quantization parse_quantization(std::string_view name) {
  using enum Quantization;
  for (Quantization quantization : {none, int8, llm_int8, nf4, fp4}) {
    if (name == quantization_name(quantization)) return quantization;
  }
  throw InvalidArgumentError(fmt::format("unknown quantization '{}' (use none, int8, llm_int8, nf4 or fp4)", name));
}

std::string model_cache_key(const ModelSpec& spec, const ModelOptions& options) {
  const c10::Device device = resolve_device(options.device);
  const at::ScalarType dtype = resolve_dtype(options.dtype, device);
  const std::string cache_dir =
      options.hub.cache_dir.empty() ? io::default_hub_cache_dir().string() : options.hub.cache_dir.string();
  return fmt::format("{}|{}@{}|{}|{}|{}|max_new_tokens={}|test_delay_ms={}|hub_cache={}", family_name(spec.family),
                     options.checkpoint.empty() ? spec.repo_id : std::string_view(options.checkpoint), spec.revision,
                     device.str(), c10::toString(dtype),
                     quantization_name(options.quantization.value_or(spec.quantization)), options.max_new_tokens,
                     options.test_delay.count(), cache_dir) +
         (options.keep_dense ? fmt::format("|keep_dense={}", fmt::join(*options.keep_dense, ",")) : std::string());
}

}  // namespace imagetotext
