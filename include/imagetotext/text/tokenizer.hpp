// Text to token ids and back, exactly as the Hugging Face `tokenizers` library does for the byte-level BPE
// tokenizers of the model families (GPT-2/CodeGen for moondream2, SmolLM2 for SmolVLM, BART for Florence-2).
//
// A Tokenizer is read from a `tokenizer.json`. Supported: model BPE (vocab, merges in either form,
// ignore_merges, byte_fallback, unk_token); added tokens (special or not, lstrip, rstrip, single_word,
// normalized); no normalizer; pre-tokenizers ByteLevel, Digits and a Sequence of them; post-processors
// ByteLevel, RobertaProcessing, TemplateProcessing and a Sequence of them; decoder ByteLevel. Anything else is
// refused with a CheckpointError naming the file and the field, never guessed.
//
// Tokenizer::from_pretrained also reads tokenizer_config.json and special_tokens_map.json, as transformers'
// AutoTokenizer (5.x) does: the named special tokens, model_max_length, the decode clean-up flags, and the
// tokenizer_class, whose effects on encode it mirrors (see from_pretrained).
//
// A Tokenizer is immutable after loading; encode and decode may run on any number of threads at once.
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "imagetotext/io/hub.hpp"

namespace imagetotext::text {

// A named special token of tokenizer_config.json / special_tokens_map.json: "bos_token", "eos_token",
// "unk_token", "sep_token", "pad_token", "cls_token", "mask_token", or a model's own ("image_token").
struct NamedSpecialToken {
  std::string name;
  std::string content;
};

// What from_pretrained read beside tokenizer.json (a Tokenizer from from_file has the defaults).
struct TokenizerConfig {
  // transformers' class: the file's tokenizer_class ("Fast" dropped), "TokenizersBackend" when it names none.
  std::string tokenizer_class = "TokenizersBackend";
  // The standard names first (bos, eos, unk, sep, pad, cls, mask; those set), then the model's own.
  std::vector<NamedSpecialToken> special_tokens;
  // additional_special_tokens (transformers 5 calls them extra_special_tokens).
  std::vector<std::string> extra_special_tokens;
  // nullopt: no limit (the field absent, or transformers' "very large" 1e30). encode never truncates.
  std::optional<std::int64_t> model_max_length;
  // As written; decode applies the clean-up only when both are true, as transformers 5 does for BPE models.
  bool clean_up_tokenization_spaces = false;
  bool clean_up_tokenization_spaces_for_bpe = false;  // ..._for_bpe_even_though_it_will_corrupt_output
};

namespace detail {
struct TokenizerData;
}

class Tokenizer {
 public:
  // Reads and validates a tokenizer.json. Throws CheckpointError (naming the file, and the field where there
  // is one) for a missing file, invalid JSON, or a component this library does not implement.
  static Tokenizer from_file(const std::filesystem::path& path);

  // The tokenizer of a model repository or local directory (io::hub_file resolves and downloads), read as
  // transformers' AutoTokenizer.from_pretrained reads it: tokenizer.json (required) with
  // tokenizer_config.json and special_tokens_map.json where present (the map only when the config has no
  // added_tokens_decoder, as transformers). Named and extra special tokens the tokenizer lacks are added as
  // special tokens, in transformers' order. The classes that transformers 5 rebuilds from the vocabulary
  // and merges (GPT2Tokenizer, CodeGenTokenizer, RobertaTokenizer, BartTokenizer) get what it gives them:
  // pre-tokenizer and decoder ByteLevel (add_prefix_space from the config), a plain BPE model, their
  // default special tokens, and for RoBERTa/BART always <cls> ... <sep>; a config.json with model_type
  // "smolvlm" makes the class TokenizersBackend, as transformers does. add_bos_token / add_eos_token are
  // checked but, as in transformers 5 when a tokenizer.json exists, tokenizer.json's post-processor decides.
  // CheckpointError naming the file and field for a missing tokenizer.json, a wrong type, or a
  // tokenizer_class whose rebuild this library does not know.
  static Tokenizer from_pretrained(std::string_view repo, std::string_view revision = "main",
                                   const io::HubOptions& hub = {});

  // The ids of `text` (UTF-8; InvalidArgumentError otherwise). With add_special_tokens the post-processor
  // adds its tokens (e.g. BART's <s> ... </s>); added tokens in the text are matched either way.
  std::vector<std::int64_t> encode(std::string_view text, bool add_special_tokens = false) const;
  // The text of `ids`; ids that are in no vocabulary are skipped, as the tokenizers library skips them.
  // Byte sequences that are not UTF-8 become U+FFFD. Then transformers' clean_up_tokenization when the
  // config asks for it (see TokenizerConfig).
  std::string decode(std::span<const std::int64_t> ids, bool skip_special_tokens = false) const;

  std::optional<std::int64_t> token_to_id(std::string_view token) const;
  std::optional<std::string> id_to_token(std::int64_t id) const;
  // Every distinct token, added tokens included (tokenizers' get_vocab_size(with_added_tokens=True)).
  std::int64_t vocab_size() const;

  const std::filesystem::path& path() const noexcept;
  const TokenizerConfig& config() const noexcept;
  // The content of a named special token ("bos_token", ...), nullopt when the config names none.
  std::optional<std::string> special_token(std::string_view name) const;

 private:
  explicit Tokenizer(std::shared_ptr<const detail::TokenizerData> data);
  std::string decode_tokens(std::span<const std::int64_t> ids, bool skip_special_tokens) const;
  std::shared_ptr<const detail::TokenizerData> data_;
};

}  // namespace imagetotext::text
