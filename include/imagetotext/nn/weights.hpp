// Weights: a checkpoint's tensors as a model's constructors read them — by dotted name under a module
// prefix (`weights["encoder"]["layers"][0].get("fc1.weight")`), each floating-point tensor moved once to the
// model's device and dtype. A missing tensor or one of the wrong shape is a CheckpointError naming the
// checkpoint and the full key, so a checkpoint that does not match its config fails at load, not mid-caption.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>
#include <c10/core/ScalarType.h>

#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "imagetotext/io/safetensors.hpp"

namespace imagetotext::nn {

// Where a model's tensors live and the dtype its floating-point weights and activations use.
struct Placement {
  c10::Device device{c10::kCPU};
  at::ScalarType dtype = at::kFloat;
};

class Weights {
 public:
  // `source` names the checkpoint in errors (a file, an index or a directory).
  Weights(io::TensorMap tensors, std::filesystem::path source, Placement placement);

  // The weights of a submodule: `name` appended to the prefix with a dot.
  Weights operator[](std::string_view name) const;
  Weights operator[](std::int64_t index) const { return (*this)[std::to_string(index)]; }

  // The full checkpoint key of `name` under this prefix.
  std::string key(std::string_view name) const { return prefix_ + std::string(name); }
  const std::string& prefix() const noexcept { return prefix_; }
  const Placement& placement() const noexcept { return placement_; }
  const std::filesystem::path& source() const noexcept;

  bool contains(std::string_view name) const;

  // The tensor on the model's device; floating-point tensors in the model's dtype, others as stored.
  // `shape`, when given, must match exactly. Throws CheckpointError naming the source and the key.
  at::Tensor get(std::string_view name, const std::vector<std::int64_t>& shape = {}) const;
  std::optional<at::Tensor> get_if(std::string_view name, const std::vector<std::int64_t>& shape = {}) const;

  // The tensor as stored (on the CPU, in its checkpoint dtype). Throws CheckpointError if absent.
  at::Tensor raw(std::string_view name) const;

  // Every tensor under this prefix, keyed without it, as stored.
  io::TensorMap raw_tensors() const;

 private:
  struct Storage {
    io::TensorMap tensors;
    std::filesystem::path source;
  };
  Weights(std::shared_ptr<const Storage> storage, std::string prefix, Placement placement)
      : storage_(std::move(storage)), prefix_(std::move(prefix)), placement_(placement) {}

  std::shared_ptr<const Storage> storage_;
  std::string prefix_;
  Placement placement_;
};

}  // namespace imagetotext::nn
