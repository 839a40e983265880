#include "imagetotext/nn/weights.hpp"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "imagetotext/core/error.hpp"

namespace imagetotext::nn {

Weights::Weights(io::TensorMap tensors, std::filesystem::path source, Placement placement)
    : storage_(std::make_shared<const Storage>(Storage{std::move(tensors), std::move(source)})),
      placement_(placement) {}

Weights Weights::operator[](std::string_view name) const { return Weights(storage_, key(name) + ".", placement_); }

const std::filesystem::path& Weights::source() const noexcept { return storage_->source; }

bool Weights::contains(std::string_view name) const { return storage_->tensors.contains(key(name)); }

at::Tensor Weights::raw(std::string_view name) const {
  const std::string full = key(name);
  const auto found = storage_->tensors.find(full);
  if (found == storage_->tensors.end()) {
    throw CheckpointError(fmt::format("checkpoint {} has no tensor '{}'", source().string(), full));
  }
  return found->second;
}

std::optional<at::Tensor> Weights::get_if(std::string_view name, const std::vector<std::int64_t>& shape) const {
  if (!contains(name)) return std::nullopt;
  return get(name, shape);
}

at::Tensor Weights::get(std::string_view name, const std::vector<std::int64_t>& shape) const {
  const at::Tensor stored = raw(name);
  if (!shape.empty() && stored.sizes() != c10::IntArrayRef(shape)) {
    throw CheckpointError(fmt::format("checkpoint {}: tensor '{}' has shape [{}] where the config implies [{}]",
                                      source().string(), key(name), fmt::join(stored.sizes(), ", "),
                                      fmt::join(shape, ", ")));
  }
  return io::to_device(stored, placement_.device, placement_.dtype);
}

io::TensorMap Weights::raw_tensors() const {
  io::TensorMap under;
  for (auto it = storage_->tensors.lower_bound(prefix_); it != storage_->tensors.end(); ++it) {
    if (it->first.compare(0, prefix_.size(), prefix_) != 0) break;
    under.emplace(it->first.substr(prefix_.size()), it->second);
  }
  return under;
}

}  // namespace imagetotext::nn
