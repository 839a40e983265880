// Typed access to a config.json object with the defaults the Python classes apply: every error names the
// file and the dotted field ("text_config.hidden_size"). Internal to the library.
#pragma once

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include "imagetotext/core/error.hpp"

namespace imagetotext::detail {

class ConfigReader {
 public:
  ConfigReader(const nlohmann::json& object, std::filesystem::path file, std::string prefix = {})
      : object_(object), file_(std::move(file)), prefix_(std::move(prefix)) {
    if (!object_.is_object()) fail("", "must be a JSON object");
  }

  bool has(const std::string& key) const { return object_.contains(key) && !object_.at(key).is_null(); }

  // The value of `key`, or `fallback` when it is absent or null.
  template <typename T>
  T get(const std::string& key, T fallback) const {
    return has(key) ? convert<T>(key) : fallback;
  }
  template <typename T>
  std::optional<T> optional(const std::string& key) const {
    return has(key) ? std::optional<T>(convert<T>(key)) : std::nullopt;
  }
  template <typename T>
  T require(const std::string& key) const {
    if (!has(key)) fail(key, "is missing");
    return convert<T>(key);
  }
  // A nested object (e.g. "text_config"); an absent one reads as empty, so every field takes its default.
  ConfigReader child(const std::string& key) const {
    static const nlohmann::json empty = nlohmann::json::object();
    return ConfigReader(has(key) ? object_.at(key) : empty, file_, path_of(key));
  }

  [[noreturn]] void fail(const std::string& key, const std::string& why) const {
    const std::string field = path_of(key);
    throw CheckpointError(fmt::format("config {}: {} {}", file_.string(),
                                      field.empty() ? std::string("the file") : "field '" + field + "'", why));
  }

 private:
  std::string path_of(const std::string& key) const {
    return prefix_.empty() ? key : key.empty() ? prefix_ : prefix_ + "." + key;
  }

  template <typename T>
  T convert(const std::string& key) const {
    const nlohmann::json& value = object_.at(key);
    if constexpr (std::is_same_v<T, bool>) {
      if (!value.is_boolean()) fail(key, "must be true or false, got " + value.dump());
    } else if constexpr (std::is_integral_v<T>) {
      if (!value.is_number_integer()) fail(key, "must be an integer, got " + value.dump());
    } else if constexpr (std::is_floating_point_v<T>) {
      if (!value.is_number()) fail(key, "must be a number, got " + value.dump());
    } else if constexpr (std::is_same_v<T, std::string>) {
      if (!value.is_string()) fail(key, "must be a string, got " + value.dump());
    } else if constexpr (std::is_same_v<T, std::vector<std::string>>) {
      if (!value.is_array() || !std::all_of(value.begin(), value.end(), [](const auto& v) { return v.is_string(); })) {
        fail(key, "must be a list of strings, got " + value.dump());
      }
    } else if constexpr (std::is_same_v<T, std::vector<bool>>) {
      if (!value.is_array() || !std::all_of(value.begin(), value.end(), [](const auto& v) { return v.is_boolean(); })) {
        fail(key, "must be a list of true/false, got " + value.dump());
      }
    } else if constexpr (std::is_same_v<T, std::vector<std::int64_t>>) {
      // An int or a list of ints, as eos_token_id may be.
      if (value.is_number_integer()) return {value.get<std::int64_t>()};
      if (!value.is_array() || !std::all_of(value.begin(), value.end(), [](const auto& v) { return v.is_number_integer(); })) {
        fail(key, "must be an integer or a list of integers, got " + value.dump());
      }
    }
    return value.get<T>();
  }

  const nlohmann::json& object_;
  std::filesystem::path file_;
  std::string prefix_;
};

}  // namespace imagetotext::detail
