// Reading tokenizer.json fields: every problem is a CheckpointError naming the file and the field (as a path
// such as `model.merges[12]`), so a user can see what is wrong without a debugger.
#pragma once

#include <nlohmann/json.hpp>

#include <cstdint>
#include <filesystem>
#include <string>
#include <string_view>
#include <vector>

namespace imagetotext::text {

using json = nlohmann::json;

// A JSON object and where it sits in the file, for messages.
struct JsonObject {
  const json& value;
  std::string where;  // "" for the top level
  const std::filesystem::path& path;

  // The dotted name of `key` in this object.
  std::string field(std::string_view key) const;
  [[noreturn]] void fail(std::string_view key, std::string_view why) const;

  // The value of `key`, or nullptr when it is absent or null.
  const json* find(std::string_view key) const;
  const json& require(std::string_view key) const;
  JsonObject object(std::string_view key) const;  // required, an object
  std::vector<JsonObject> objects(std::string_view key) const;  // required, a list of objects ("key[i]")
  std::string string(std::string_view key) const;  // required, a string
  bool boolean(std::string_view key, bool fallback) const;  // absent or null: fallback
  std::uint32_t id(std::string_view key) const;  // required, a token id (0 .. 2^32-1)
};

// The whole file as JSON; CheckpointError for a missing file or invalid JSON.
json read_json_file(const std::filesystem::path& path);

// A JSON value that must be a token id.
std::uint32_t as_token_id(const json& value, const JsonObject& parent, std::string_view key);

}  // namespace imagetotext::text
