#define PCRE2_CODE_UNIT_WIDTH 8
#include "regex.hpp"

#include <pcre2.h>

#include <stdexcept>
#include <string>

#include "unicode.hpp"

namespace imagetotext::text {
namespace {

// One match buffer and one JIT stack per thread, shared by every pattern (none has capture groups). The
// JIT stack is larger than PCRE2's 32 KiB default so long runs of one character class never hit its limit.
struct ThreadMatchState {
  pcre2_match_data* data = pcre2_match_data_create(1, nullptr);
  pcre2_jit_stack* jit_stack = pcre2_jit_stack_create(32 * 1024, 4 * 1024 * 1024, nullptr);
  pcre2_match_context* context = pcre2_match_context_create(nullptr);

  ThreadMatchState() {
    if (data == nullptr || context == nullptr) throw std::bad_alloc();
    if (jit_stack != nullptr) pcre2_jit_stack_assign(context, nullptr, jit_stack);
  }
  ~ThreadMatchState() {
    pcre2_match_context_free(context);
    pcre2_jit_stack_free(jit_stack);
    pcre2_match_data_free(data);
  }
};

ThreadMatchState& thread_match_state() {
  thread_local ThreadMatchState state;
  return state;
}

std::string pcre2_message(int code) {
  PCRE2_UCHAR buffer[256];
  pcre2_get_error_message(code, buffer, sizeof buffer);
  return reinterpret_cast<const char*>(buffer);
}

// Runs one match from `offset`; returns false when there is none. Errors (a JIT stack or match limit) are
// thrown, never taken for "no match".
bool match_once(void* code, std::string_view text, std::size_t offset, std::uint32_t options, ByteRange& found) {
  ThreadMatchState& state = thread_match_state();
  const int rc = pcre2_match(static_cast<pcre2_code*>(code), reinterpret_cast<PCRE2_SPTR>(text.data()), text.size(),
                             offset, options | PCRE2_NO_UTF_CHECK, state.data, state.context);
  if (rc == PCRE2_ERROR_NOMATCH) return false;
  if (rc < 0) throw std::runtime_error("regular expression match failed: " + pcre2_message(rc));
  const PCRE2_SIZE* ovector = pcre2_get_ovector_pointer(state.data);
  found = {ovector[0], ovector[1]};
  return true;
}

}  // namespace

Regex::Regex(std::string_view pattern) {
  int error = 0;
  PCRE2_SIZE error_offset = 0;
  pcre2_code* code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.data()), pattern.size(),
                                   PCRE2_UTF | PCRE2_UCP | PCRE2_NO_UTF_CHECK, &error, &error_offset, nullptr);
  if (code == nullptr) {
    throw std::logic_error("cannot compile the regular expression '" + std::string(pattern) +
                           "': " + pcre2_message(error) + " at offset " + std::to_string(error_offset));
  }
  // JIT is an optimisation only: where PCRE2 was built without it, pcre2_match interprets the pattern.
  pcre2_jit_compile(code, PCRE2_JIT_COMPLETE);
  code_ = code;
}

Regex::~Regex() { pcre2_code_free(static_cast<pcre2_code*>(code_)); }

void Regex::find_all(std::string_view text, std::vector<ByteRange>& matches) const {
  std::size_t offset = 0;
  ByteRange found{};
  while (offset <= text.size() && match_once(code_, text, offset, 0, found)) {
    if (found.end == found.begin) {
      // An empty match is kept out (no split needs one) and the search moves on by one character.
      if (found.begin >= text.size()) break;
      offset = found.begin + utf8_length(static_cast<unsigned char>(text[found.begin]));
      continue;
    }
    matches.push_back(found);
    offset = found.end;
  }
}

bool Regex::matches_at(std::string_view text, std::size_t offset) const {
  ByteRange found{};
  return match_once(code_, text, offset, PCRE2_ANCHORED, found);
}

}  // namespace imagetotext::text
