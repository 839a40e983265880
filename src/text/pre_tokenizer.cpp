#include "pre_tokenizer.hpp"

#include <fmt/format.h>

#include "regex.hpp"
#include "unicode.hpp"

namespace imagetotext::text {
namespace {

// Unicode White_Space, spelled out: it is what `\s` means in Oniguruma, the engine the library runs the GPT-2
// pattern with, while PCRE2's `\s` leaves out U+0085.
#define IMAGETOTEXT_WHITE_SPACE R"(\t-\r \x{85}\x{A0}\x{1680}\x{2000}-\x{200A}\x{2028}\x{2029}\x{202F}\x{205F}\x{3000})"

// The GPT-2 split pattern: 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
const Regex& gpt2_pattern() {
  static const Regex pattern(
      R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^)" IMAGETOTEXT_WHITE_SPACE R"(\p{L}\p{N}]+)"
      R"(|[)" IMAGETOTEXT_WHITE_SPACE R"(]+(?![^)" IMAGETOTEXT_WHITE_SPACE R"(])|[)" IMAGETOTEXT_WHITE_SPACE R"(]+)");
  return pattern;
}
#undef IMAGETOTEXT_WHITE_SPACE

// Rust's char::is_numeric is the general categories Nd, Nl and No: \p{N}.
const Regex& digit_pattern(bool individual) {
  static const Regex one(R"(\p{N})");
  static const Regex run(R"(\p{N}+)");
  return individual ? one : run;
}

// The library's Isolated split: each match is a piece, and so is the text between matches.
void split_isolated(std::string_view text, const Regex& pattern, std::vector<std::string>& pieces) {
  thread_local std::vector<ByteRange> matches;
  matches.clear();
  pattern.find_all(text, matches);
  std::size_t previous_end = 0;
  for (const ByteRange& match : matches) {
    if (match.begin > previous_end) pieces.emplace_back(text.substr(previous_end, match.begin - previous_end));
    pieces.emplace_back(text.substr(match.begin, match.end - match.begin));
    previous_end = match.end;
  }
  if (previous_end < text.size()) pieces.emplace_back(text.substr(previous_end));
}

std::string to_byte_level(std::string_view text) {
  const auto& characters = byte_level_characters();
  std::string mapped;
  mapped.reserve(text.size() * 2);
  for (const char byte : text) mapped += characters[static_cast<unsigned char>(byte)];
  return mapped;
}

void run_step(const PreTokenizerStep& step, std::string_view piece, std::vector<std::string>& out) {
  if (step.kind == PreTokenizerStep::Kind::kDigits) return split_isolated(piece, digit_pattern(step.individual_digits), out);
  std::string prefixed;
  if (step.add_prefix_space && !piece.starts_with(' ')) {
    prefixed.reserve(piece.size() + 1);
    prefixed.append(1, ' ').append(piece);
    piece = prefixed;
  }
  const std::size_t first = out.size();
  if (step.use_regex) {
    split_isolated(piece, gpt2_pattern(), out);
  } else {
    out.emplace_back(piece);
  }
  for (std::size_t i = first; i < out.size(); ++i) out[i] = to_byte_level(out[i]);
}

void parse_step(const JsonObject& object, std::vector<PreTokenizerStep>& steps) {
  const std::string type = object.string("type");
  if (type == "ByteLevel") {
    steps.push_back({PreTokenizerStep::Kind::kByteLevel, object.boolean("add_prefix_space", true),
                     object.boolean("use_regex", true), false});
  } else if (type == "Digits") {
    steps.push_back({PreTokenizerStep::Kind::kDigits, false, false, object.boolean("individual_digits", false)});
  } else if (type == "Sequence") {
    for (const JsonObject& element : object.objects("pretokenizers")) parse_step(element, steps);
  } else {
    object.fail("type", fmt::format("'{}' is not supported (supported: ByteLevel, Digits, Sequence)", type));
  }
}

}  // namespace

std::vector<PreTokenizerStep> parse_pre_tokenizer(const JsonObject& root) {
  std::vector<PreTokenizerStep> steps;
  if (root.find("pre_tokenizer") != nullptr) parse_step(root.object("pre_tokenizer"), steps);
  return steps;
}

void pre_tokenize(std::string_view text, const std::vector<PreTokenizerStep>& steps, std::vector<std::string>& words) {
  std::vector<std::string> pieces{std::string(text)};
  std::vector<std::string> next;
  for (const PreTokenizerStep& step : steps) {
    next.clear();
    for (const std::string& piece : pieces) run_step(step, piece, next);
    pieces.swap(next);
  }
  for (std::string& piece : pieces) {
    if (!piece.empty()) words.push_back(std::move(piece));  // the library drops empty pieces
  }
}

const std::array<std::string, 256>& byte_level_characters() {
  // Printable bytes stand for themselves; the other 68, in order, for U+0100 onwards (space: U+0120 'Ġ').
  static const std::array<std::string, 256> characters = [] {
    std::array<std::string, 256> table;
    char32_t next_substitute = 0x100;
    for (int byte = 0; byte < 256; ++byte) {
      const bool printable = (byte >= '!' && byte <= '~') || (byte >= 0xa1 && byte <= 0xac) || byte >= 0xae;
      append_utf8(table[byte], printable ? static_cast<char32_t>(byte) : next_substitute++);
    }
    return table;
  }();
  return characters;
}

std::optional<std::uint8_t> byte_of_byte_level_character(char32_t character) {
  static const std::array<std::int16_t, 0x144> bytes = [] {
    std::array<std::int16_t, 0x144> table;
    table.fill(-1);
    for (int byte = 0; byte < 256; ++byte) {
      const std::string& mapped = byte_level_characters()[byte];
      table[decode_utf8_at(mapped, 0)] = static_cast<std::int16_t>(byte);
    }
    return table;
  }();
  if (character >= bytes.size() || bytes[character] < 0) return std::nullopt;
  return static_cast<std::uint8_t>(bytes[character]);
}

}  // namespace imagetotext::text
