// tokenizer_config.json and special_tokens_map.json as transformers 5's from_pretrained reads them, and what
// its tokenizer classes then do to the tokenizer.json they load (transformers/tokenization_utils_base.py
// _from_pretrained and __init__, tokenization_utils_tokenizers.py, models/{gpt2,codegen,roberta}).
#pragma once

#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include "added_vocabulary.hpp"
#include "imagetotext/text/tokenizer.hpp"
#include "tokenizer_json.hpp"

namespace imagetotext::text {

// How the class builds its backend: verbatim from tokenizer.json (TokenizersBackend), or rebuilt from the
// vocabulary and merges with byte-level pieces (GPT2Tokenizer, CodeGenTokenizer) and, for RoBERTa/BART,
// the <cls> ... <sep> post-processor.
enum class TokenizerBackend { kVerbatim, kByteLevel, kRoberta };

struct PretrainedTokenizerConfig {
  TokenizerConfig config;
  TokenizerBackend backend = TokenizerBackend::kVerbatim;
  bool add_prefix_space = false;
  // Named special tokens with their flags, in the order transformers adds the missing ones.
  std::vector<std::pair<std::string, AddedToken>> named_tokens;
  std::vector<AddedToken> extra_tokens;
  // added_tokens_decoder, by index, when the config has one.
  std::optional<std::vector<AddedToken>> added_tokens_decoder;
};

// Reads both files (either may be absent); `model_type` is config.json's, when the model has one.
// CheckpointError naming the file and field for invalid JSON or a wrong type.
PretrainedTokenizerConfig read_pretrained_tokenizer_config(const std::optional<std::filesystem::path>& tokenizer_config,
                                                           const std::optional<std::filesystem::path>& special_tokens_map,
                                                           const std::optional<std::string>& model_type);

// tokenizer.json's document as the class has it after loading: rebuilt pieces, and the added tokens the
// config adds (appended to "added_tokens"; AddedVocabulary gives them the ids the library would).
void apply_pretrained_config(json& tokenizer_json, const PretrainedTokenizerConfig& config);

// transformers' clean_up_tokenization: spaces before punctuation and English contractions removed.
std::string clean_up_tokenization(std::string text);

}  // namespace imagetotext::text
