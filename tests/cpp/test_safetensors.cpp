// safetensors: round trips of every dtype, tensors that alias the mapping, sharded checkpoints, the
// writer's layout, and one CheckpointError naming the file (and tensor) per kind of corrupt header.
#include <ATen/ATen.h>

#include <cstring>
#include <filesystem>
#include <string>
#include <vector>

#include "catch.hpp"
#include "imagetotext/core/error.hpp"
#include "imagetotext/io/safetensors.hpp"
#include "test_files.hpp"

namespace fs = std::filesystem;
using namespace imagetotext;
using testing::read_bytes;
using testing::scratch_dir;
using testing::write_bytes;

namespace {

// Every dtype the loader maps onto torch, with values that exercise the whole byte pattern.
std::vector<at::Tensor> one_tensor_per_dtype() {
  const auto bytes = at::randint(0, 256, {2, 3, 4}, at::kByte);
  std::vector<at::Tensor> tensors;
  for (const at::ScalarType dtype :
       {at::kBool, at::kByte, at::kChar, at::kShort, at::kInt, at::kLong, at::kHalf, at::kBFloat16, at::kFloat,
        at::kDouble, at::kUInt16, at::kUInt32, at::kUInt64, at::kFloat8_e4m3fn, at::kFloat8_e5m2, at::kComplexFloat}) {
    if (dtype == at::kBool) {
      tensors.push_back(bytes.remainder(2).to(at::kBool));
    } else {
      // Random bytes reinterpreted, so every bit of the element is checked (NaN payloads included).
      const std::int64_t element = static_cast<std::int64_t>(c10::elementSize(dtype));
      tensors.push_back(at::randint(0, 256, {2, 3, 4 * element}, at::kByte).view(dtype));
    }
  }
  return tensors;
}

bool same_bytes(const at::Tensor& a, const at::Tensor& b) {
  return a.scalar_type() == b.scalar_type() && a.sizes() == b.sizes() && a.nbytes() == b.nbytes() &&
         std::memcmp(a.contiguous().const_data_ptr(), b.contiguous().const_data_ptr(), a.nbytes()) == 0;
}

// A file from a header text and a data section, with the length field taken from the text unless given.
void write_safetensors_bytes(const fs::path& path, const std::string& header, const std::vector<std::uint8_t>& data,
                             std::optional<std::uint64_t> length_field = std::nullopt) {
  const std::uint64_t length = length_field.value_or(header.size());
  std::vector<std::uint8_t> bytes(8);
  std::memcpy(bytes.data(), &length, 8);
  bytes.insert(bytes.end(), header.begin(), header.end());
  bytes.insert(bytes.end(), data.begin(), data.end());
  write_bytes(path, bytes);
}

std::string u8_entry(const std::string& name, const std::string& shape, int begin, int end) {
  return "\"" + name + "\":{\"dtype\":\"U8\",\"shape\":" + shape + ",\"data_offsets\":[" + std::to_string(begin) + "," +
         std::to_string(end) + "]}";
}

// A header object from its entries' text.
std::string header_of(const std::vector<std::string>& entries) {
  std::string header = "{";
  for (const std::string& entry : entries) header.append(header.size() > 1 ? "," : "").append(entry);
  return header.append("}");
}

}  // namespace

TEST_CASE("every dtype survives a round trip, with metadata", "[safetensors]") {
  const fs::path path = scratch_dir() / "every-dtype.safetensors";
  io::TensorMap written;
  for (const at::Tensor& tensor : one_tensor_per_dtype()) written.emplace(c10::toString(tensor.scalar_type()), tensor);
  written.emplace("scalar", at::tensor(3.5f).reshape({}));
  written.emplace("empty", at::empty({0, 3}, at::kHalf));
  written.emplace("strided", at::arange(12, at::kInt).reshape({3, 4}).t());  // written contiguous
  const io::MetadataMap metadata{{"format", "pt"}, {"note", "ünïcode ✓"}};
  io::save_safetensors(written, path, metadata);
  CHECK_FALSE(fs::exists(path.string() + ".incomplete"));

  const io::Checkpoint loaded = io::load_safetensors(path);
  CHECK(loaded.metadata == metadata);
  REQUIRE(loaded.tensors.size() == written.size());
  for (const auto& [name, tensor] : written) {
    INFO(name);
    REQUIRE(loaded.tensors.contains(name));
    CHECK(same_bytes(loaded.tensors.at(name), tensor));
  }
}

TEST_CASE("the writer lays the header out as the safetensors library does", "[safetensors]") {
  const fs::path path = scratch_dir() / "layout.safetensors";
  io::save_safetensors({{"b", at::zeros({2}, at::kHalf)}, {"a", at::ones({3})}, {"c", at::zeros({1}, at::kBool)}}, path,
                       {{"format", "pt"}});
  const std::vector<std::uint8_t> bytes = read_bytes(path);
  std::uint64_t length = 0;
  std::memcpy(&length, bytes.data(), 8);
  CHECK(length % 8 == 0);
  // What safetensors.torch.save_file writes for the same tensors: dtype alignment first, then name.
  const std::string expected =
      R"({"__metadata__":{"format":"pt"},"a":{"dtype":"F32","shape":[3],"data_offsets":[0,12]},)"
      R"("b":{"dtype":"F16","shape":[2],"data_offsets":[12,16]},"c":{"dtype":"BOOL","shape":[1],"data_offsets":[16,17]}})";
  const std::string header(bytes.begin() + 8, bytes.begin() + 8 + static_cast<std::ptrdiff_t>(length));
  CHECK(header.substr(0, expected.size()) == expected);
  CHECK(header.find_first_not_of(' ', expected.size()) == std::string::npos);  // padded with spaces only
  CHECK(header.size() - expected.size() < 8);
  CHECK(bytes.size() == 8 + length + 17);
}

TEST_CASE("tensors alias the mapping and outlive the reader", "[safetensors]") {
  const fs::path path = scratch_dir() / "alias.safetensors";
  const at::Tensor weight = at::randn({16, 8});
  io::save_safetensors({{"weight", weight}, {"ids", at::arange(5)}}, path);

  at::Tensor loaded;
  {
    const io::SafetensorsFile file(path);
    loaded = file.tensor("weight");
    const std::span<const std::uint8_t> mapped = file.mapped_bytes();
    const auto* data = static_cast<const std::uint8_t*>(loaded.const_data_ptr());
    CHECK(data >= mapped.data());
    CHECK(data + loaded.nbytes() <= mapped.data() + mapped.size());
    // Moving to the CPU in the same dtype keeps the alias; converting makes a copy.
    CHECK(io::to_device(loaded, at::kCPU).const_data_ptr() == loaded.const_data_ptr());
    CHECK(io::to_device(loaded, at::kCPU, at::kBFloat16).scalar_type() == at::kBFloat16);
    CHECK(io::to_device(file.tensor("ids"), at::kCPU, at::kHalf).scalar_type() == at::kLong);
    REQUIRE_THROWS_AS(io::to_device(loaded, at::kCPU, at::kInt), InvalidArgumentError);
    REQUIRE_THROWS_WITH(file.tensor("bias"), ContainsSubstring(path.string()) && ContainsSubstring("'bias'"));
  }
  CHECK(at::equal(loaded, weight));  // the reader is gone; the tensor still holds the mapping
  loaded.add_(1);                    // copy-on-write: writing in place neither crashes nor touches the file
  CHECK(at::equal(io::load_safetensors(path).tensors.at("weight"), weight));
}

TEST_CASE("data placed at an unaligned address is copied, not misread", "[safetensors]") {
  const fs::path path = scratch_dir() / "unaligned.safetensors";
  // A one-byte tensor first puts the F32 data at an odd address (as files written in name order can).
  std::string header = R"({"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},"b":{"dtype":"F32","shape":[1],"data_offsets":[1,5]}})";
  header.resize((header.size() + 7) / 8 * 8, ' ');
  const float value = 1.25f;
  std::vector<std::uint8_t> data{7, 0, 0, 0, 0};
  std::memcpy(data.data() + 1, &value, 4);
  write_safetensors_bytes(path, header, data);
  const io::Checkpoint loaded = io::load_safetensors(path);
  CHECK(loaded.tensors.at("a").item<std::uint8_t>() == 7);
  CHECK(loaded.tensors.at("b").item<float>() == value);
}

TEST_CASE("sharded checkpoints load through their index", "[safetensors]") {
  const fs::path dir = scratch_dir() / "sharded";
  fs::create_directories(dir);
  const at::Tensor a = at::randn({4, 4}), b = at::arange(6, at::kInt), c = at::ones({2}, at::kBFloat16);
  io::save_safetensors({{"a", a}, {"b", b}}, dir / "model-00001-of-00002.safetensors");
  io::save_safetensors({{"c", c}}, dir / "model-00002-of-00002.safetensors");
  const fs::path index = dir / "model.safetensors.index.json";
  auto write_index = [&](const std::string& weight_map) {
    const std::string text = R"({"metadata":{"total_size":94},"weight_map":)" + weight_map + "}";
    write_bytes(index, std::vector<std::uint8_t>(text.begin(), text.end()));
  };
  write_index(R"({"a":"model-00001-of-00002.safetensors","b":"model-00001-of-00002.safetensors",)"
              R"("c":"model-00002-of-00002.safetensors"})");

  for (const fs::path& source : {index, dir}) {
    const io::Checkpoint loaded = io::load_safetensors(source);
    CHECK(loaded.tensors.size() == 3);
    CHECK(at::equal(loaded.tensors.at("a"), a));
    CHECK(at::equal(loaded.tensors.at("b"), b));
    CHECK(at::equal(loaded.tensors.at("c"), c));
    CHECK(loaded.metadata.at("total_size") == "94");
  }

  write_index(R"({"a":"model-00001-of-00002.safetensors","d":"model-00002-of-00002.safetensors"})");
  REQUIRE_THROWS_AS(io::load_safetensors(index), CheckpointError);
  REQUIRE_THROWS_WITH(io::load_safetensors(index), ContainsSubstring("'d'") && ContainsSubstring(index.string()) &&
                                                       ContainsSubstring("model-00002-of-00002.safetensors"));
  write_index(R"({"a":"../model-00001-of-00002.safetensors"})");
  REQUIRE_THROWS_WITH(io::load_safetensors(index), ContainsSubstring("outside its directory"));
  write_index(R"({"a":"model-00003-of-00002.safetensors"})");
  REQUIRE_THROWS_WITH(io::load_safetensors(index), ContainsSubstring("model-00003-of-00002.safetensors"));
  write_bytes(index, {'{', 'x'});
  REQUIRE_THROWS_WITH(io::load_safetensors(index), ContainsSubstring(index.string()) && ContainsSubstring("JSON"));
  REQUIRE_THROWS_WITH(io::load_safetensors(scratch_dir()), ContainsSubstring("model.safetensors"));
}

TEST_CASE("a failed write leaves no file that looks complete", "[safetensors]") {
  const fs::path dir = scratch_dir();
  const fs::path unwritable = dir / "no-such-dir" / "model.safetensors";
  REQUIRE_THROWS_AS(io::save_safetensors({{"a", at::ones({2})}}, unwritable), CheckpointError);
  REQUIRE_THROWS_WITH(io::save_safetensors({{"a", at::ones({2})}}, unwritable), ContainsSubstring(unwritable.string()));

  const fs::path path = dir / "unsupported.safetensors";
  REQUIRE_THROWS_AS(io::save_safetensors({{"a", at::ones({2}, at::kComplexDouble)}}, path), InvalidArgumentError);
  REQUIRE_THROWS_AS(io::save_safetensors({{"__metadata__", at::ones({2})}}, path), InvalidArgumentError);
  CHECK_FALSE(fs::exists(path));
  CHECK_FALSE(fs::exists(path.string() + ".incomplete"));
}

TEST_CASE("every corrupt header is a CheckpointError naming the file and the tensor", "[safetensors]") {
  const fs::path dir = scratch_dir();
  struct Corruption {
    std::string name;
    std::string header;
    std::vector<std::uint8_t> data;
    std::optional<std::uint64_t> length_field;
    std::string expected;  // a fragment of the message (the tensor's name where there is one)
  };
  const std::vector<std::uint8_t> four(4, 1);
  const std::vector<Corruption> corruptions = {
      {"huge-header-length", "{}", {}, 100'000'001, "over the 100000000-byte limit"},
      {"header-beyond-file", "{}", {}, 64, "runs past the end"},
      {"invalid-json", "{\"a\":", {}, {}, "not valid JSON"},
      {"invalid-utf8", "{\"\xff\":1}", {}, {}, "not valid JSON"},
      {"not-an-object", "[1,2]", {}, {}, "not a JSON object"},
      {"entry-not-object", "{\"a\":3}", {}, {}, "'a'"},
      {"unknown-dtype", R"({"a":{"dtype":"F12","shape":[4],"data_offsets":[0,4]}})", four, {}, "unknown dtype 'F12'"},
      {"torchless-dtype", R"({"a":{"dtype":"F4","shape":[8],"data_offsets":[0,4]}})", four, {}, "'a' has dtype F4"},
      {"negative-shape", R"({"a":{"dtype":"U8","shape":[-4],"data_offsets":[0,4]}})", four, {}, "'a' has a shape entry"},
      {"fractional-shape", R"({"a":{"dtype":"U8","shape":[4.0],"data_offsets":[0,4]}})", four, {}, "'a' has a shape entry"},
      {"missing-offsets", R"({"a":{"dtype":"U8","shape":[4]}})", four, {}, "'a' has no data_offsets"},
      {"wrong-size", R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,4]}})", four, {}, "'a' has shape [2]"},
      {"overflowing-shape", R"({"a":{"dtype":"F64","shape":[4294967296,4294967296],"data_offsets":[0,4]}})", four, {},
       "'a' has a shape whose byte size overflows"},
      {"end-before-begin", header_of({u8_entry("a", "[0]", 4, 0)}), four, {}, "'a' has data_offsets [4, 0]"},
      {"overlap", header_of({u8_entry("a", "[3]", 0, 3), u8_entry("b", "[2]", 2, 4)}), four, {},
       "'b' has data_offsets [2, 4] overlapping tensor 'a'"},
      {"hole", header_of({u8_entry("a", "[1]", 0, 1), u8_entry("b", "[2]", 2, 4)}), four, {}, "'b'"},
      {"out-of-range", header_of({u8_entry("a", "[8]", 0, 8)}), four, {}, "'a' has data_offsets [0, 8] beyond"},
      {"trailing-bytes", header_of({u8_entry("a", "[2]", 0, 2)}), four, {}, "cover 2 bytes of the 4-byte"},
      {"duplicate-name", header_of({u8_entry("a", "[2]", 0, 2), u8_entry("a", "[2]", 2, 4)}), four, {},
       "'a' appears more than once"},
      {"metadata-not-string", R"({"__metadata__":{"k":1}})", {}, {}, "__metadata__"},
  };
  for (const Corruption& corruption : corruptions) {
    INFO(corruption.name);
    const fs::path path = dir / (corruption.name + ".safetensors");
    write_safetensors_bytes(path, corruption.header, corruption.data, corruption.length_field);
    REQUIRE_THROWS_AS(io::SafetensorsFile(path), CheckpointError);
    REQUIRE_THROWS_WITH(io::SafetensorsFile(path),
                        ContainsSubstring(path.string()) && ContainsSubstring(corruption.expected));
  }

  // The parser quotes the bytes it stopped at; messages must stay valid UTF-8 all the same.
  REQUIRE_THROWS_WITH(io::SafetensorsFile(dir / "invalid-utf8.safetensors"), !ContainsSubstring("\xff"));

  // A file cut anywhere, even inside the length field, is refused.
  const fs::path whole = dir / "whole.safetensors";
  io::save_safetensors({{"a", at::randn({64})}, {"b", at::arange(10)}}, whole);
  const std::vector<std::uint8_t> bytes = read_bytes(whole);
  for (const std::size_t keep : {std::size_t{0}, std::size_t{5}, std::size_t{8}, std::size_t{40}, bytes.size() - 1}) {
    INFO(keep);
    const fs::path cut = dir / "cut.safetensors";
    write_bytes(cut, std::vector<std::uint8_t>(bytes.begin(), bytes.begin() + static_cast<std::ptrdiff_t>(keep)));
    REQUIRE_THROWS_AS(io::SafetensorsFile(cut), CheckpointError);
    REQUIRE_THROWS_WITH(io::SafetensorsFile(cut), ContainsSubstring(cut.string()));
  }

  REQUIRE_THROWS_WITH(io::SafetensorsFile(dir / "missing.safetensors"),
                      ContainsSubstring("missing.safetensors") && ContainsSubstring("not found"));
  REQUIRE_THROWS_WITH(io::SafetensorsFile(dir), ContainsSubstring("not a regular file"));
}
