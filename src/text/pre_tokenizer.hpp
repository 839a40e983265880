// The pre-tokenizers the families use, as the tokenizers library runs them: each step splits every piece
// the previous step left, and ByteLevel also rewrites each piece's bytes as the GPT-2 byte alphabet.
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "tokenizer_json.hpp"

namespace imagetotext::text {

struct PreTokenizerStep {
  enum class Kind { kByteLevel, kDigits };
  Kind kind;
  bool add_prefix_space = false;  // ByteLevel: prepend ' ' to each piece that does not start with one
  bool use_regex = true;          // ByteLevel: split with the GPT-2 pattern
  bool individual_digits = false;  // Digits: one piece per digit (else one per run of digits)
};

// tokenizer.json's "pre_tokenizer" (null: no steps); CheckpointError for a type this library lacks.
std::vector<PreTokenizerStep> parse_pre_tokenizer(const JsonObject& root);

// Appends the words of one piece of text (valid UTF-8) that the model then splits into tokens.
void pre_tokenize(std::string_view text, const std::vector<PreTokenizerStep>& steps, std::vector<std::string>& words);

// GPT-2's byte alphabet: each byte as the (printable) character that stands for it in byte-level vocabularies.
const std::array<std::string, 256>& byte_level_characters();
// The byte a character of that alphabet stands for; nullopt for any other character.
std::optional<std::uint8_t> byte_of_byte_level_character(char32_t character);

}  // namespace imagetotext::text
