#include "json_file.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <fstream>

#include "imagetotext/core/error.hpp"

namespace imagetotext::io::detail {

std::string json_error_text(const nlohmann::json::exception& error) {
  std::string text = error.what();
  std::replace_if(text.begin(), text.end(), [](char c) { return c < 0x20 || c > 0x7e; }, '?');
  return text;
}

nlohmann::json read_json_file(const std::filesystem::path& path, std::string_view what) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw CheckpointError(fmt::format("cannot open {} {}", what, path.string()));
  try {
    return nlohmann::json::parse(in);
  } catch (const nlohmann::json::exception& e) {
    throw CheckpointError(fmt::format("{} {} is not valid JSON ({})", what, path.string(), json_error_text(e)));
  }
}

}  // namespace imagetotext::io::detail
