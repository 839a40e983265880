// Text to token ids and back, exactly as the Hugging Face `tokenizers` library does for the byte-level BPE
// tokenizers of the model families (GPT-2/CodeGen for moondream2, SmolLM2 for SmolVLM, BART for Florence-2).
//
// A Tokenizer is read from a `tokenizer.json`. Supported: model BPE (vocab, merges in either form,
// ignore_merges, byte_fallback, unk_token); added tokens (special or not, lstrip, rstrip, single_word,
// normalized); no normalizer; pre-tokenizers ByteLevel, Digits and a Sequence of them; post-processors
// ByteLevel, RobertaProcessing, TemplateProcessing and a Sequence of them; decoder ByteLevel. Anything else is
// refused with a CheckpointError naming the file and the field, never guessed.
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

namespace imagetotext::text {

namespace detail {
struct TokenizerData;
}

class Tokenizer {
 public:
  // Reads and validates a tokenizer.json. Throws CheckpointError (naming the file, and the field where there
  // is one) for a missing file, invalid JSON, or a component this library does not implement.
  static Tokenizer from_file(const std::filesystem::path& path);

  // The ids of `text` (UTF-8; InvalidArgumentError otherwise). With add_special_tokens the post-processor
  // adds its tokens (e.g. BART's <s> ... </s>); added tokens in the text are matched either way.
  std::vector<std::int64_t> encode(std::string_view text, bool add_special_tokens = false) const;
  // The text of `ids`; ids that are in no vocabulary are skipped, as the tokenizers library skips them.
  // Byte sequences that are not UTF-8 become U+FFFD.
  std::string decode(std::span<const std::int64_t> ids, bool skip_special_tokens = false) const;

  std::optional<std::int64_t> token_to_id(std::string_view token) const;
  std::optional<std::string> id_to_token(std::int64_t id) const;
  // Every distinct token, added tokens included (tokenizers' get_vocab_size(with_added_tokens=True)).
  std::int64_t vocab_size() const;

  const std::filesystem::path& path() const noexcept;

 private:
  explicit Tokenizer(std::shared_ptr<const detail::TokenizerData> data);
  std::shared_ptr<const detail::TokenizerData> data_;
};

}  // namespace imagetotext::text
