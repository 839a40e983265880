// Logging through fmt. One process-wide level, set from IMAGETOTEXT_LOG_LEVEL (debug, info, warning,
// error, off) or by set_log_level(); messages go to stderr so captions on stdout stay clean.
#pragma once

#include <fmt/format.h>

#include <string_view>

namespace imagetotext {

enum class LogLevel { debug = 0, info = 1, warning = 2, error = 3, off = 4 };

LogLevel log_level() noexcept;
void set_log_level(LogLevel level) noexcept;
// Parses "debug", "info", "warning", "error" or "off"; throws InvalidArgumentError otherwise.
LogLevel parse_log_level(std::string_view name);

namespace detail {
void write_log(LogLevel level, std::string_view message);
}  // namespace detail

template <typename... Args>
void log(LogLevel level, fmt::format_string<Args...> format, Args&&... args) {
  if (level < log_level()) return;
  detail::write_log(level, fmt::format(format, std::forward<Args>(args)...));
}

template <typename... Args>
void log_debug(fmt::format_string<Args...> format, Args&&... args) {
  log(LogLevel::debug, format, std::forward<Args>(args)...);
}
template <typename... Args>
void log_info(fmt::format_string<Args...> format, Args&&... args) {
  log(LogLevel::info, format, std::forward<Args>(args)...);
}
template <typename... Args>
void log_warning(fmt::format_string<Args...> format, Args&&... args) {
  log(LogLevel::warning, format, std::forward<Args>(args)...);
}

}  // namespace imagetotext
