#include "tokenizer_json.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <fstream>
#include <iterator>
#include <limits>

#include "imagetotext/core/error.hpp"

namespace imagetotext::text {

namespace fs = std::filesystem;

std::string JsonObject::field(std::string_view key) const {
  return where.empty() ? std::string(key) : fmt::format("{}.{}", where, key);
}

void JsonObject::fail(std::string_view key, std::string_view why) const {
  throw CheckpointError(fmt::format("invalid tokenizer file {}: {} {}", path.string(), field(key), why));
}

const json* JsonObject::find(std::string_view key) const {
  const auto found = value.find(key);
  return found == value.end() || found->is_null() ? nullptr : &*found;
}

const json& JsonObject::require(std::string_view key) const {
  const json* found = find(key);
  if (found == nullptr) fail(key, "is missing");
  return *found;
}

JsonObject JsonObject::object(std::string_view key) const {
  const json& found = require(key);
  if (!found.is_object()) fail(key, "is not a JSON object");
  return {found, field(key), path};
}

std::vector<JsonObject> JsonObject::objects(std::string_view key) const {
  const json& list = require(key);
  if (!list.is_array()) fail(key, "is not a list");
  std::vector<JsonObject> elements;
  for (std::size_t i = 0; i < list.size(); ++i) {
    const std::string element = fmt::format("{}[{}]", key, i);
    if (!list[i].is_object()) fail(element, "is not a JSON object");
    elements.push_back({list[i], field(element), path});
  }
  return elements;
}

std::string JsonObject::string(std::string_view key) const {
  const json& found = require(key);
  if (!found.is_string()) fail(key, "is not a string");
  return found.get<std::string>();
}

bool JsonObject::boolean(std::string_view key, bool fallback) const {
  const json* found = find(key);
  if (found == nullptr) return fallback;
  if (!found->is_boolean()) fail(key, "is not true or false");
  return found->get<bool>();
}

std::uint32_t JsonObject::id(std::string_view key) const { return as_token_id(require(key), *this, key); }

std::uint32_t as_token_id(const json& value, const JsonObject& parent, std::string_view key) {
  if (!value.is_number_unsigned() || value.get<std::uint64_t>() > std::numeric_limits<std::uint32_t>::max()) {
    parent.fail(key, fmt::format("is not a token id (an integer from 0 to 2^32-1): {}", value.dump()));
  }
  return value.get<std::uint32_t>();
}

json read_json_file(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    std::error_code error;
    const bool exists = fs::exists(path, error);
    throw CheckpointError(fmt::format("cannot open tokenizer file {}: {}", path.string(),
                                      exists ? "permission denied or not a file" : "file not found"));
  }
  const std::string text{std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
  try {
    return json::parse(text);
  } catch (const json::exception& e) {
    // nlohmann quotes the bytes it read last, which need not be UTF-8; messages must be (Python decodes them).
    std::string why = e.what();
    std::replace_if(why.begin(), why.end(), [](char c) { return c < 0x20 || c > 0x7e; }, '?');
    throw CheckpointError(fmt::format("invalid tokenizer file {}: not valid JSON ({})", path.string(), why));
  }
}

}  // namespace imagetotext::text
