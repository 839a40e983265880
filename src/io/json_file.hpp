// Reading JSON files (checkpoint indexes, configs) with errors that name the file. Internal to the library.
#pragma once

#include <nlohmann/json.hpp>

#include <filesystem>
#include <string>
#include <string_view>

namespace imagetotext::io::detail {

// nlohmann's parse errors quote the bytes last read, which in a corrupt file need not be UTF-8; messages
// must be (Python decodes them), so anything outside printable ASCII becomes '?'.
std::string json_error_text(const nlohmann::json::exception& error);

// Parses the file; `what` names it in errors ("checkpoint index", "model config"). Throws CheckpointError
// for a missing, unreadable or invalid file.
nlohmann::json read_json_file(const std::filesystem::path& path, std::string_view what);

}  // namespace imagetotext::io::detail
