// safetensors reading (memory-mapped, validated as the format's Rust implementation validates) and writing
// (the header layout that implementation writes, renamed into place only when complete).
#include "imagetotext/io/safetensors.hpp"

#include "json_file.hpp"

#include <ATen/ATen.h>
#include <fcntl.h>
#include <fmt/format.h>
#include <fmt/ranges.h>
#include <nlohmann/json.hpp>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <limits>
#include <optional>
#include <set>
#include <system_error>
#include <tuple>

#include "imagetotext/core/error.hpp"

static_assert(std::endian::native == std::endian::little, "safetensors data is little-endian, as is this host's");

namespace imagetotext::io {

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

constexpr std::size_t kLengthFieldBytes = 8;

// A dtype the format defines. `alignment_rank` is its position in the reference implementation's Dtype
// enum, which is ordered by alignment: writers sort tensors by it (descending) so each tensor's data
// stays aligned. `torch` is empty for dtypes torch cannot hold (sub-byte floats, E8M0).
struct FormatDtype {
  std::string_view name;
  int alignment_rank;
  std::optional<at::ScalarType> torch;
};

constexpr FormatDtype kFormatDtypes[] = {
    {"BOOL", 0, at::kBool},
    {"F4", 1, std::nullopt},
    {"F6_E2M3", 2, std::nullopt},
    {"F6_E3M2", 3, std::nullopt},
    {"U8", 4, at::kByte},
    {"I8", 5, at::kChar},
    {"F8_E5M2", 6, at::kFloat8_e5m2},
    {"F8_E4M3", 7, at::kFloat8_e4m3fn},
    {"F8_E8M0", 8, std::nullopt},
    {"F8_E4M3FNUZ", 9, at::kFloat8_e4m3fnuz},
    {"F8_E5M2FNUZ", 10, at::kFloat8_e5m2fnuz},
    {"I16", 11, at::kShort},
    {"U16", 12, at::kUInt16},
    {"F16", 13, at::kHalf},
    {"BF16", 14, at::kBFloat16},
    {"I32", 15, at::kInt},
    {"U32", 16, at::kUInt32},
    {"F32", 17, at::kFloat},
    {"C64", 18, at::kComplexFloat},
    {"F64", 19, at::kDouble},
    {"I64", 20, at::kLong},
    {"U64", 21, at::kUInt64},
};

const FormatDtype* find_format_dtype(std::string_view name) {
  for (const FormatDtype& dtype : kFormatDtypes) {
    if (dtype.name == name) return &dtype;
  }
  return nullptr;
}

const FormatDtype& format_dtype_of(at::ScalarType type) {
  for (const FormatDtype& dtype : kFormatDtypes) {
    if (dtype.torch == type) return dtype;
  }
  throw InvalidArgumentError(fmt::format("safetensors cannot hold dtype {}", c10::toString(type)));
}

[[noreturn]] void fail(const fs::path& path, std::string_view why) {
  throw CheckpointError(fmt::format("invalid safetensors checkpoint {}: {}", path.string(), why));
}

[[noreturn]] void fail_tensor(const fs::path& path, std::string_view tensor, std::string_view why) {
  throw CheckpointError(fmt::format("invalid safetensors checkpoint {}: tensor '{}' {}", path.string(), tensor, why));
}

}  // namespace

// ---- The mapping ----------------------------------------------------------------------------------------

namespace detail {

// A whole file mapped copy-on-write: the file is opened read-only and never changes, but a caller that
// writes into a tensor in place gets private pages instead of a segmentation fault.
class MappedFile {
 public:
  explicit MappedFile(const fs::path& path) {
    const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
      const int error = errno;
      throw CheckpointError(fmt::format("cannot open safetensors checkpoint {}: {}", path.string(),
                                        error == ENOENT ? "file not found" : std::strerror(error)));
    }
    struct stat info {};
    const bool is_file = ::fstat(fd, &info) == 0 && S_ISREG(info.st_mode);
    size_ = is_file ? static_cast<std::size_t>(info.st_size) : 0;
    if (is_file && size_ > 0) {
      void* mapped = ::mmap(nullptr, size_, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
      data_ = mapped == MAP_FAILED ? nullptr : static_cast<std::uint8_t*>(mapped);
    }
    const int map_error = errno;
    ::close(fd);
    if (!is_file) throw CheckpointError(fmt::format("safetensors checkpoint {} is not a regular file", path.string()));
    if (size_ > 0 && data_ == nullptr) {
      throw CheckpointError(fmt::format("cannot map safetensors checkpoint {}: {}", path.string(), std::strerror(map_error)));
    }
  }
  ~MappedFile() {
    if (data_ != nullptr) ::munmap(data_, size_);
  }
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  std::uint8_t* data() const noexcept { return data_; }
  std::size_t size() const noexcept { return size_; }

 private:
  std::uint8_t* data_ = nullptr;
  std::size_t size_ = 0;
};

}  // namespace detail

// ---- Reading ----------------------------------------------------------------------------------------------

namespace {

// Parses the JSON header, refusing a name that appears twice (the reference silently keeps the last one,
// which hides a broken writer).
json parse_header_json(std::string_view text, const fs::path& path) {
  std::optional<std::string> duplicate;
  std::set<std::string> names;
  const json::parser_callback_t note_duplicates = [&](int depth, json::parse_event_t event, json& parsed) {
    if (event == json::parse_event_t::key && depth == 1 && !names.insert(parsed.get<std::string>()).second) {
      duplicate = duplicate.value_or(parsed.get<std::string>());
    }
    return true;
  };
  json header;
  try {
    header = json::parse(text.begin(), text.end(), note_duplicates);
  } catch (const json::exception& e) {
    fail(path, fmt::format("the header is not valid JSON ({})", detail::json_error_text(e)));
  }
  if (!header.is_object()) fail(path, "the header is not a JSON object");
  if (duplicate) fail_tensor(path, *duplicate, "appears more than once in the header");
  return header;
}

// A JSON value that must be a non-negative integer (nlohmann types every non-negative integer literal as
// unsigned; negative numbers, fractions and integers beyond 64 bits are something else).
std::optional<std::uint64_t> as_unsigned(const json& value) {
  if (!value.is_number_unsigned()) return std::nullopt;
  return value.get<std::uint64_t>();
}

SafetensorsEntry parse_entry(const std::string& name, const json& value, const fs::path& path) {
  if (!value.is_object()) fail_tensor(path, name, "is not described by a JSON object");
  const auto dtype_field = value.find("dtype");
  const auto shape_field = value.find("shape");
  const auto offsets_field = value.find("data_offsets");
  if (dtype_field == value.end() || !dtype_field->is_string()) fail_tensor(path, name, "has no dtype string");
  const std::string dtype_name = dtype_field->get<std::string>();
  const FormatDtype* dtype = find_format_dtype(dtype_name);
  if (dtype == nullptr) fail_tensor(path, name, fmt::format("has an unknown dtype '{}'", dtype_name));
  if (!dtype->torch) fail_tensor(path, name, fmt::format("has dtype {}, which torch cannot hold", dtype_name));

  SafetensorsEntry entry{name, *dtype->torch, {}, 0, 0};
  if (shape_field == value.end() || !shape_field->is_array()) fail_tensor(path, name, "has no shape list");
  for (const json& dim : *shape_field) {
    const std::optional<std::uint64_t> size = as_unsigned(dim);
    if (!size || *size > static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max())) {
      fail_tensor(path, name, fmt::format("has a shape entry that is not a non-negative integer: {}", dim.dump()));
    }
    entry.shape.push_back(static_cast<std::int64_t>(*size));
  }
  if (offsets_field == value.end() || !offsets_field->is_array() || offsets_field->size() != 2 ||
      !as_unsigned((*offsets_field)[0]) || !as_unsigned((*offsets_field)[1])) {
    fail_tensor(path, name, "has no data_offsets pair of non-negative integers");
  }
  entry.begin = *as_unsigned((*offsets_field)[0]);
  entry.end = *as_unsigned((*offsets_field)[1]);
  return entry;
}

MetadataMap parse_metadata(const json& value, const fs::path& path) {
  MetadataMap metadata;
  if (value.is_null()) return metadata;  // the reference reads null as "no metadata"
  if (!value.is_object()) fail(path, "__metadata__ is not a JSON object");
  for (const auto& [key, text] : value.items()) {
    if (!text.is_string()) fail(path, fmt::format("__metadata__ value of '{}' is not a string", key));
    metadata.emplace(key, text.get<std::string>());
  }
  return metadata;
}

// Bytes a tensor of this shape and dtype needs, or nullopt when that overflows 64 bits.
std::optional<std::uint64_t> checked_byte_size(const SafetensorsEntry& entry) {
  std::uint64_t bytes = c10::elementSize(entry.dtype);
  for (const std::int64_t dim : entry.shape) {
    if (__builtin_mul_overflow(bytes, static_cast<std::uint64_t>(dim), &bytes)) return std::nullopt;
  }
  return bytes;
}

// The reference's rules: sorted by offsets, each tensor starts where the previous one ended (no overlap,
// no hole), its byte range matches shape x dtype size, and together they cover the data section exactly.
void validate_layout(std::vector<SafetensorsEntry>& entries, std::uint64_t data_bytes, const fs::path& path) {
  std::sort(entries.begin(), entries.end(),
            [](const SafetensorsEntry& a, const SafetensorsEntry& b) { return std::tie(a.begin, a.end) < std::tie(b.begin, b.end); });
  std::uint64_t covered = 0;
  const SafetensorsEntry* previous = nullptr;
  for (const SafetensorsEntry& entry : entries) {
    const std::string range = fmt::format("[{}, {}]", entry.begin, entry.end);
    if (entry.end < entry.begin) fail_tensor(path, entry.name, fmt::format("has data_offsets {} that end before they begin", range));
    if (entry.begin < covered) {
      fail_tensor(path, entry.name, fmt::format("has data_offsets {} overlapping tensor '{}'", range, previous->name));
    }
    if (entry.begin > covered) {
      fail_tensor(path, entry.name, fmt::format("has data_offsets {} leaving a hole after byte {} of the data section",
                                                range, covered));
    }
    if (entry.end > data_bytes) {
      fail_tensor(path, entry.name, fmt::format("has data_offsets {} beyond the {}-byte data section (truncated file?)",
                                                range, data_bytes));
    }
    const std::optional<std::uint64_t> needed = checked_byte_size(entry);
    if (!needed) fail_tensor(path, entry.name, "has a shape whose byte size overflows 64 bits");
    if (*needed != entry.end - entry.begin) {
      fail_tensor(path, entry.name, fmt::format("has shape [{}] of {} needing {} bytes, but data_offsets {} hold {}",
                                                fmt::join(entry.shape, ", "), c10::toString(entry.dtype), *needed,
                                                range, entry.end - entry.begin));
    }
    covered = entry.end;
    previous = &entry;
  }
  if (covered != data_bytes) {
    fail(path, fmt::format("the tensors cover {} bytes of the {}-byte data section", covered, data_bytes));
  }
}

}  // namespace

std::string_view safetensors_dtype_name(at::ScalarType dtype) { return format_dtype_of(dtype).name; }

SafetensorsFile::SafetensorsFile(const fs::path& path)
    : path_(path), mapping_(std::make_shared<detail::MappedFile>(path)) {
  const std::uint64_t file_bytes = mapping_->size();
  if (file_bytes < kLengthFieldBytes) fail(path, fmt::format("{} bytes is too short for the header length", file_bytes));
  std::uint64_t header_bytes = 0;
  std::memcpy(&header_bytes, mapping_->data(), kLengthFieldBytes);
  if (header_bytes > kMaxSafetensorsHeaderBytes) {
    fail(path, fmt::format("header length {} is over the {}-byte limit", header_bytes, kMaxSafetensorsHeaderBytes));
  }
  if (header_bytes > file_bytes - kLengthFieldBytes) {
    fail(path, fmt::format("header length {} runs past the end of the {}-byte file", header_bytes, file_bytes));
  }
  data_start_ = kLengthFieldBytes + header_bytes;

  const json header = parse_header_json(
      std::string_view(reinterpret_cast<const char*>(mapping_->data()) + kLengthFieldBytes, header_bytes), path);
  for (const auto& [name, value] : header.items()) {
    if (name == "__metadata__") {
      metadata_ = parse_metadata(value, path);
    } else {
      entries_.push_back(parse_entry(name, value, path));
    }
  }
  validate_layout(entries_, file_bytes - data_start_, path);
  for (std::size_t i = 0; i < entries_.size(); ++i) index_.emplace(entries_[i].name, i);
}

std::span<const std::uint8_t> SafetensorsFile::mapped_bytes() const noexcept {
  return {mapping_->data(), mapping_->size()};
}

at::Tensor SafetensorsFile::make_tensor(const SafetensorsEntry& entry) const {
  std::uint8_t* data = mapping_->data() + data_start_ + entry.begin;
  const auto options = at::TensorOptions().dtype(entry.dtype);
  // Files written in name order (older writers) can place data at an address the dtype may not be read
  // from; those tensors are copied, everything else aliases the mapping and keeps it alive.
  if (reinterpret_cast<std::uintptr_t>(data) % c10::elementSize(entry.dtype) != 0) {
    at::Tensor copy = at::empty(entry.shape, options);
    std::memcpy(copy.data_ptr(), data, entry.end - entry.begin);
    return copy;
  }
  return at::from_blob(data, entry.shape, [keep_mapped = mapping_](void*) {}, options);
}

at::Tensor SafetensorsFile::tensor(const std::string& name) const {
  const auto found = index_.find(name);
  if (found == index_.end()) {
    throw CheckpointError(fmt::format("safetensors checkpoint {} has no tensor '{}'", path_.string(), name));
  }
  return make_tensor(entries_[found->second]);
}

TensorMap SafetensorsFile::tensors() const {
  TensorMap tensors;
  for (const SafetensorsEntry& entry : entries_) tensors.emplace(entry.name, make_tensor(entry));
  return tensors;
}

// ---- Sharded checkpoints and the public loader ---------------------------------------------------------------

namespace {

constexpr std::string_view kSingleFileName = "model.safetensors";
constexpr std::string_view kIndexFileName = "model.safetensors.index.json";
constexpr std::string_view kIndexSuffix = ".index.json";


// A shard must be a file beside the index: an absolute path or '..' would read outside the checkpoint.
fs::path shard_path(const fs::path& index_path, const std::string& shard) {
  const fs::path relative(shard);
  const bool escapes = relative.is_absolute() || relative.empty() ||
                       std::any_of(relative.begin(), relative.end(), [](const fs::path& part) { return part == ".."; });
  if (escapes) {
    throw CheckpointError(fmt::format("checkpoint index {} names shard '{}' outside its directory", index_path.string(), shard));
  }
  return index_path.parent_path() / relative;
}

Checkpoint load_sharded(const fs::path& index_path) {
  const json index = detail::read_json_file(index_path, "checkpoint index");
  const auto weight_map = index.is_object() ? index.find("weight_map") : index.end();
  if (weight_map == index.end() || !weight_map->is_object()) {
    throw CheckpointError(fmt::format("checkpoint index {} has no weight_map object", index_path.string()));
  }
  Checkpoint checkpoint;
  // The index's metadata holds numbers (total_size); they are kept as their JSON text.
  if (const auto metadata = index.find("metadata"); metadata != index.end() && metadata->is_object()) {
    for (const auto& [key, value] : metadata->items()) {
      checkpoint.metadata.emplace(key, value.is_string() ? value.get<std::string>() : value.dump());
    }
  }
  std::map<std::string, std::vector<std::string>> names_by_shard;
  for (const auto& [name, shard] : weight_map->items()) {
    if (!shard.is_string()) {
      throw CheckpointError(fmt::format("checkpoint index {} maps tensor '{}' to something other than a file name",
                                        index_path.string(), name));
    }
    names_by_shard[shard.get<std::string>()].push_back(name);
  }
  for (const auto& [shard, names] : names_by_shard) {
    const SafetensorsFile file(shard_path(index_path, shard));
    for (const std::string& name : names) {
      if (!file.contains(name)) {
        throw CheckpointError(fmt::format("checkpoint index {} puts tensor '{}' in {}, which does not hold it",
                                          index_path.string(), name, file.path().string()));
      }
      checkpoint.tensors.emplace(name, file.tensor(name));
    }
  }
  return checkpoint;
}

}  // namespace

Checkpoint load_safetensors(const fs::path& path) {
  std::error_code unreadable;  // a path that cannot be inspected is reported when it is opened
  if (fs::is_directory(path, unreadable)) {
    if (fs::exists(path / kSingleFileName, unreadable)) return load_safetensors(path / kSingleFileName);
    if (fs::exists(path / kIndexFileName, unreadable)) return load_sharded(path / kIndexFileName);
    throw CheckpointError(fmt::format("checkpoint directory {} holds neither {} nor {}", path.string(), kSingleFileName,
                                      kIndexFileName));
  }
  if (path.string().ends_with(kIndexSuffix)) return load_sharded(path);
  const SafetensorsFile file(path);
  return {file.tensors(), file.metadata()};
}

at::Tensor to_device(const at::Tensor& tensor, c10::Device device, std::optional<at::ScalarType> float_dtype) {
  if (float_dtype && !at::isFloatingType(*float_dtype)) {
    throw InvalidArgumentError(fmt::format("to_device: {} is not a floating-point dtype", c10::toString(*float_dtype)));
  }
  if (float_dtype && tensor.is_floating_point()) return tensor.to(device, *float_dtype);
  return tensor.to(device);
}

// ---- Writing ------------------------------------------------------------------------------------------------

namespace {

struct TensorToWrite {
  const std::string* name;
  const FormatDtype* dtype;
  at::Tensor data;  // contiguous, on the CPU
};

// Removes the partial file unless the write reached the rename.
class IncompleteFile {
 public:
  explicit IncompleteFile(fs::path path) : path_(std::move(path)) {}
  ~IncompleteFile() {
    if (!done_) {
      std::error_code ignored;  // already failing; the original error is the one to report
      fs::remove(path_, ignored);
    }
  }
  const fs::path& path() const noexcept { return path_; }
  void done() noexcept { done_ = true; }

 private:
  fs::path path_;
  bool done_ = false;
};

std::string header_text(const std::vector<TensorToWrite>& tensors, const MetadataMap& metadata) {
  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  std::uint64_t offset = 0;
  for (const TensorToWrite& tensor : tensors) {
    const std::uint64_t bytes = tensor.data.nbytes();
    header[*tensor.name] = {{"dtype", tensor.dtype->name},
                            {"shape", tensor.data.sizes().vec()},
                            {"data_offsets", {offset, offset + bytes}}};
    offset += bytes;
  }
  std::string text;
  try {
    text = header.dump();
  } catch (const nlohmann::ordered_json::exception& e) {
    throw InvalidArgumentError(fmt::format("a tensor name or metadata string is not valid UTF-8 ({})", detail::json_error_text(e)));
  }
  // Padding with spaces to a multiple of 8 keeps the data section 8-byte aligned.
  text.resize((text.size() + 7) / 8 * 8, ' ');
  return text;
}

}  // namespace

void save_safetensors(const TensorMap& tensors, const fs::path& path, const MetadataMap& metadata) {
  std::vector<TensorToWrite> ordered;
  for (const auto& [name, tensor] : tensors) {
    if (name == "__metadata__") throw InvalidArgumentError("a tensor cannot be named __metadata__ in safetensors");
    ordered.push_back({&name, &format_dtype_of(tensor.scalar_type()), tensor.to(at::kCPU).contiguous()});
  }
  std::sort(ordered.begin(), ordered.end(), [](const TensorToWrite& a, const TensorToWrite& b) {
    if (a.dtype->alignment_rank != b.dtype->alignment_rank) return a.dtype->alignment_rank > b.dtype->alignment_rank;
    return *a.name < *b.name;
  });
  const std::string header = header_text(ordered, metadata);
  if (header.size() > kMaxSafetensorsHeaderBytes) {
    throw CheckpointError(fmt::format("cannot write safetensors checkpoint {}: the {}-byte header is over the limit",
                                      path.string(), header.size()));
  }

  IncompleteFile incomplete(path.string() + ".incomplete");
  {
    std::ofstream out(incomplete.path(), std::ios::binary | std::ios::trunc);
    const std::uint64_t header_bytes = header.size();
    out.write(reinterpret_cast<const char*>(&header_bytes), sizeof header_bytes);
    out.write(header.data(), static_cast<std::streamsize>(header.size()));
    for (const TensorToWrite& tensor : ordered) {
      out.write(static_cast<const char*>(tensor.data.const_data_ptr()), static_cast<std::streamsize>(tensor.data.nbytes()));
    }
    out.close();
    if (!out) {
      throw CheckpointError(fmt::format("cannot write safetensors checkpoint {}: {}", incomplete.path().string(),
                                        std::strerror(errno)));
    }
  }
  std::error_code error;
  fs::rename(incomplete.path(), path, error);
  if (error) {
    throw CheckpointError(fmt::format("cannot rename {} to {}: {}", incomplete.path().string(), path.string(), error.message()));
  }
  incomplete.done();
}

}  // namespace imagetotext::io
