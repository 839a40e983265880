// A compiled PCRE2 pattern in UTF and Unicode-property mode (JIT-compiled where the library supports it),
// used for the pre-tokenizers' splits. Matching is thread-safe: each thread has its own match buffers.
#pragma once

#include <cstddef>
#include <string_view>
#include <vector>

namespace imagetotext::text {

struct ByteRange {
  std::size_t begin;
  std::size_t end;
};

class Regex {
 public:
  // Throws std::logic_error for a pattern PCRE2 refuses: patterns are this library's, never the user's.
  explicit Regex(std::string_view pattern);
  ~Regex();
  Regex(const Regex&) = delete;
  Regex& operator=(const Regex&) = delete;

  // Appends every non-overlapping match of `text` (valid UTF-8), leftmost first, to `matches`.
  void find_all(std::string_view text, std::vector<ByteRange>& matches) const;
  // Whether the pattern matches starting exactly at `offset`.
  bool matches_at(std::string_view text, std::size_t offset) const;

 private:
  void* code_;  // pcre2_code_8, kept out of this header
};

}  // namespace imagetotext::text
