// UTF-8 and Unicode helpers the tokenizer needs, with the tokenizers library's (Rust's) semantics.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace imagetotext::text {

// Whether `text` is well-formed UTF-8 (no overlongs, surrogates or code points above U+10FFFF).
bool is_valid_utf8(std::string_view text);

// The length in bytes of the UTF-8 character that starts with `lead` (1 for a stray byte).
inline std::size_t utf8_length(unsigned char lead) {
  if (lead < 0x80) return 1;
  if ((lead >> 5) == 0x6) return 2;
  if ((lead >> 4) == 0xe) return 3;
  if ((lead >> 3) == 0x1e) return 4;
  return 1;
}

// The code point at `text[offset]`, which must start a character of valid UTF-8.
char32_t decode_utf8_at(std::string_view text, std::size_t offset);
// The start of the character that ends at `end` (valid UTF-8, end > 0).
std::size_t previous_utf8_start(std::string_view text, std::size_t end);

void append_utf8(std::string& out, char32_t code_point);

// Unicode's White_Space property: what `\s` means in the regex engines tokenizers uses (Oniguruma for the
// pre-tokenizer, Rust's regex for added tokens). The set has not changed since Unicode 6.3.
bool is_white_space(char32_t code_point);

// Rust's String::from_utf8_lossy: each maximal ill-formed subsequence becomes one U+FFFD, as Unicode
// recommends (so "\xE2\x82" is one replacement character, "\xFF\xFF" two).
std::string utf8_lossy(std::string_view bytes);

}  // namespace imagetotext::text
