#include "unicode.hpp"

namespace imagetotext::text {
namespace {

// The length of the longest prefix of `bytes` that is, or could begin, a well-formed UTF-8 character, and
// whether that prefix is a whole character. Follows the Unicode table of well-formed byte sequences
// (Table 3-7), which is what makes the replacement of ill-formed input "maximal subparts".
struct Utf8Prefix {
  std::size_t length;
  bool complete;
};

Utf8Prefix well_formed_prefix(std::string_view bytes) {
  const auto byte = [&](std::size_t i) { return static_cast<unsigned char>(bytes[i]); };
  const unsigned char lead = byte(0);
  if (lead < 0x80) return {1, true};
  std::size_t length;
  unsigned char second_low = 0x80, second_high = 0xbf;
  if (lead >= 0xc2 && lead <= 0xdf) {
    length = 2;
  } else if (lead >= 0xe0 && lead <= 0xef) {
    length = 3;
    if (lead == 0xe0) second_low = 0xa0;   // no overlongs
    if (lead == 0xed) second_high = 0x9f;  // no surrogates
  } else if (lead >= 0xf0 && lead <= 0xf4) {
    length = 4;
    if (lead == 0xf0) second_low = 0x90;   // no overlongs
    if (lead == 0xf4) second_high = 0x8f;  // nothing above U+10FFFF
  } else {
    return {0, false};
  }
  for (std::size_t i = 1; i < length; ++i) {
    if (i >= bytes.size()) return {i, false};
    const unsigned char low = i == 1 ? second_low : 0x80;
    const unsigned char high = i == 1 ? second_high : 0xbf;
    if (byte(i) < low || byte(i) > high) return {i, false};
  }
  return {length, true};
}

}  // namespace

bool is_valid_utf8(std::string_view text) {
  for (std::size_t offset = 0; offset < text.size();) {
    const Utf8Prefix prefix = well_formed_prefix(text.substr(offset));
    if (!prefix.complete) return false;
    offset += prefix.length;
  }
  return true;
}

char32_t decode_utf8_at(std::string_view text, std::size_t offset) {
  const auto byte = [&](std::size_t i) { return static_cast<char32_t>(static_cast<unsigned char>(text[offset + i])); };
  switch (utf8_length(static_cast<unsigned char>(text[offset]))) {
    case 2: return ((byte(0) & 0x1f) << 6) | (byte(1) & 0x3f);
    case 3: return ((byte(0) & 0x0f) << 12) | ((byte(1) & 0x3f) << 6) | (byte(2) & 0x3f);
    case 4: return ((byte(0) & 0x07) << 18) | ((byte(1) & 0x3f) << 12) | ((byte(2) & 0x3f) << 6) | (byte(3) & 0x3f);
    default: return byte(0);
  }
}

std::size_t previous_utf8_start(std::string_view text, std::size_t end) {
  std::size_t start = end - 1;
  while (start > 0 && (static_cast<unsigned char>(text[start]) & 0xc0) == 0x80) --start;
  return start;
}

void append_utf8(std::string& out, char32_t code_point) {
  if (code_point < 0x80) {
    out += static_cast<char>(code_point);
  } else if (code_point < 0x800) {
    out += static_cast<char>(0xc0 | (code_point >> 6));
    out += static_cast<char>(0x80 | (code_point & 0x3f));
  } else if (code_point < 0x10000) {
    out += static_cast<char>(0xe0 | (code_point >> 12));
    out += static_cast<char>(0x80 | ((code_point >> 6) & 0x3f));
    out += static_cast<char>(0x80 | (code_point & 0x3f));
  } else {
    out += static_cast<char>(0xf0 | (code_point >> 18));
    out += static_cast<char>(0x80 | ((code_point >> 12) & 0x3f));
    out += static_cast<char>(0x80 | ((code_point >> 6) & 0x3f));
    out += static_cast<char>(0x80 | (code_point & 0x3f));
  }
}

bool is_white_space(char32_t c) {
  return (c >= 0x09 && c <= 0x0d) || c == 0x20 || c == 0x85 || c == 0xa0 || c == 0x1680 ||
         (c >= 0x2000 && c <= 0x200a) || c == 0x2028 || c == 0x2029 || c == 0x202f || c == 0x205f || c == 0x3000;
}

std::string utf8_lossy(std::string_view bytes) {
  std::string out;
  out.reserve(bytes.size());
  for (std::size_t offset = 0; offset < bytes.size();) {
    const Utf8Prefix prefix = well_formed_prefix(bytes.substr(offset));
    if (prefix.complete) {
      out.append(bytes.substr(offset, prefix.length));
      offset += prefix.length;
    } else {
      out += "\xef\xbf\xbd";  // U+FFFD for the maximal ill-formed subpart (at least one byte)
      offset += prefix.length == 0 ? 1 : prefix.length;
    }
  }
  return out;
}

}  // namespace imagetotext::text
