// Checkpoints in the safetensors format: an 8-byte little-endian header length N, N bytes of JSON
// ({"name": {"dtype", "shape", "data_offsets": [begin, end]}, ..., "__metadata__": {str: str}}), then the
// data section that the offsets index.
//
// Reading maps the file and hands out tensors that alias the mapping (no copy on the CPU); each tensor
// keeps the mapping alive, so tensors may outlive the SafetensorsFile they came from. The header is
// validated as the format's own (Rust) implementation does before any tensor is made, and every problem
// is a CheckpointError naming the file and, where there is one, the tensor.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>
#include <c10/core/ScalarType.h>

#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace imagetotext::io {

// The reference implementation's limit on the JSON header (100 MB): a larger length field is refused
// before anything is read.
inline constexpr std::uint64_t kMaxSafetensorsHeaderBytes = 100'000'000;

using TensorMap = std::map<std::string, at::Tensor>;
using MetadataMap = std::map<std::string, std::string>;

// The format's dtype string ("BF16", "F32", ...) for a torch dtype; throws InvalidArgumentError for one
// the format cannot hold.
std::string_view safetensors_dtype_name(at::ScalarType dtype);

// One tensor as the header describes it.
struct SafetensorsEntry {
  std::string name;
  at::ScalarType dtype;
  std::vector<std::int64_t> shape;
  std::uint64_t begin;  // byte offsets relative to the start of the data section
  std::uint64_t end;
};

namespace detail {
class MappedFile;
}

// One .safetensors file, mapped and validated.
class SafetensorsFile {
 public:
  // Throws CheckpointError if the file is missing, unreadable, or its header is invalid.
  explicit SafetensorsFile(const std::filesystem::path& path);

  const std::filesystem::path& path() const noexcept { return path_; }
  const MetadataMap& metadata() const noexcept { return metadata_; }
  // Every tensor, in the order of their data (ascending offsets).
  const std::vector<SafetensorsEntry>& entries() const noexcept { return entries_; }
  bool contains(const std::string& name) const { return index_.contains(name); }

  // The tensor `name` on the CPU, aliasing the mapping (a copy only where the file places it at an address
  // not aligned for its dtype). Throws CheckpointError naming the file and the tensor if it is absent.
  at::Tensor tensor(const std::string& name) const;
  TensorMap tensors() const;

  // The whole file as mapped: tensors' data lies inside it.
  std::span<const std::uint8_t> mapped_bytes() const noexcept;

 private:
  at::Tensor make_tensor(const SafetensorsEntry& entry) const;

  std::filesystem::path path_;
  std::shared_ptr<detail::MappedFile> mapping_;
  std::uint64_t data_start_ = 0;
  MetadataMap metadata_;
  std::vector<SafetensorsEntry> entries_;
  std::map<std::string, std::size_t, std::less<>> index_;  // name -> position in entries_
};

// A checkpoint's tensors and the `__metadata__` of its file (of the index, for a sharded one).
struct Checkpoint {
  TensorMap tensors;
  MetadataMap metadata;
};

// Reads a checkpoint: a .safetensors file; a sharded checkpoint's index (`model.safetensors.index.json`,
// {"metadata": ..., "weight_map": {tensor: shard file}}), opening each shard once; or a directory holding
// `model.safetensors` or `model.safetensors.index.json`. Tensors alias the mapped files. Throws
// CheckpointError naming the file (and the tensor: one the index names but its shard lacks names both).
Checkpoint load_safetensors(const std::filesystem::path& path);

// Moves a loaded tensor to `device`, converting floating-point tensors to `float_dtype` when given;
// integer and bool tensors (quantized weights, indices, masks) keep their dtype. On the CPU with the
// same dtype the result still aliases the mapping.
at::Tensor to_device(const at::Tensor& tensor, c10::Device device,
                     std::optional<at::ScalarType> float_dtype = std::nullopt);

// Writes tensors (any device, any layout: each is copied to contiguous CPU memory where it is not) with
// the header layout the safetensors library writes: tensors ordered by descending dtype alignment then
// name, the JSON padded with spaces to a multiple of 8. The file is written as `path + ".incomplete"`
// and renamed when complete, so a failed write leaves nothing that looks like a checkpoint. Throws
// InvalidArgumentError for a dtype the format cannot hold or a tensor named "__metadata__", and
// CheckpointError naming the path if writing fails.
void save_safetensors(const TensorMap& tensors, const std::filesystem::path& path, const MetadataMap& metadata = {});

}  // namespace imagetotext::io
