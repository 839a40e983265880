#include "imagetotext/core/logging.hpp"

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <mutex>
#include <string>

#include "imagetotext/core/error.hpp"

namespace imagetotext {
namespace {

LogLevel initial_level() {
  const char* env = std::getenv("IMAGETOTEXT_LOG_LEVEL");
  if (env == nullptr || *env == '\0') return LogLevel::warning;
  try {
    return parse_log_level(env);
  } catch (const InvalidArgumentError&) {
    std::fprintf(stderr, "imagetotext: ignoring IMAGETOTEXT_LOG_LEVEL=%s (use debug, info, warning, error or off)\n",
                 env);
    return LogLevel::warning;
  }
}

std::atomic<LogLevel>& level_storage() {
  static std::atomic<LogLevel> level{initial_level()};
  return level;
}

constexpr std::string_view kLevelNames[] = {"debug", "info", "warning", "error", "off"};

}  // namespace

LogLevel log_level() noexcept { return level_storage().load(std::memory_order_relaxed); }

void set_log_level(LogLevel level) noexcept { level_storage().store(level, std::memory_order_relaxed); }

LogLevel parse_log_level(std::string_view name) {
  for (int i = 0; i < 5; ++i) {
    if (name == kLevelNames[i]) return static_cast<LogLevel>(i);
  }
  throw InvalidArgumentError(fmt::format("unknown log level '{}' (use debug, info, warning, error or off)", name));
}

namespace detail {
void write_log(LogLevel level, std::string_view message) {
  static std::mutex mutex;  // one line at a time when several threads caption at once
  std::lock_guard<std::mutex> lock(mutex);
  fmt::print(stderr, "imagetotext [{}] {}\n", kLevelNames[static_cast<int>(level)], message);
}
}  // namespace detail

}  // namespace imagetotext
