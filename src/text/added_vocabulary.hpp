// Added tokens (special or not) and how the tokenizers library finds them in text before anything else
// runs: leftmost-longest matching, first of the tokens with normalized=false on the raw text, then of the
// normalized=true ones on what is left; single_word, lstrip and rstrip as in its AddedVocabulary.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "bpe.hpp"

namespace imagetotext::text {

struct AddedToken {
  std::string content;
  bool single_word = false;
  bool lstrip = false;
  bool rstrip = false;
  bool normalized = true;
  bool special = false;
};

// A piece of the input text: an added token (id set) or text for the pre-tokenizer and model.
struct TextPiece {
  std::size_t begin;
  std::size_t end;
  std::optional<std::uint32_t> id;
};

class AddedVocabulary {
 public:
  AddedVocabulary() = default;
  // The tokens of a file's added_tokens, in order. Each gets the id the library gives it, whatever id the
  // file says: the id its content already has (here or in the model's vocabulary), else the next one from
  // the model's vocabulary size on. Tokens with empty content are ignored, as the library ignores them.
  AddedVocabulary(std::vector<AddedToken> tokens, const Bpe& model);

  // `text` split into pieces, in order, none empty.
  std::vector<TextPiece> split(std::string_view text) const;

  std::optional<std::uint32_t> token_to_id(std::string_view content) const;
  const AddedToken* token(std::uint32_t id) const;
  bool is_special(std::string_view content) const;
  // How many distinct contents, and how many of them the model's vocabulary also holds.
  std::size_t size() const noexcept { return ids_by_content_.size(); }
  std::size_t count_in(const Bpe& model) const;

 private:
  // A byte trie of token contents, walked from each position for the longest match there.
  class Matcher {
   public:
    void insert(std::string_view content, std::uint32_t id);
    bool empty() const noexcept { return nodes_.size() <= 1; }
    // The end and id of the longest content that starts at `offset`.
    std::optional<std::pair<std::size_t, std::uint32_t>> longest_at(std::string_view text, std::size_t offset) const;

   private:
    struct Node {
      std::vector<std::pair<unsigned char, std::uint32_t>> children;
      std::optional<std::uint32_t> id;
    };
    std::vector<Node> nodes_{Node{}};
    bool first_bytes_[256] = {};
  };

  // One pass of the library's find_matches over `text`, appending pieces offset by `base`.
  void split_with(const Matcher& matcher, std::string_view text, std::size_t base, std::vector<TextPiece>& pieces) const;

  TokenMap ids_by_content_;
  std::unordered_map<std::uint32_t, AddedToken> tokens_by_id_;
  Matcher raw_matcher_;         // normalized=false: matched on the input as given
  Matcher normalized_matcher_;  // normalized=true: matched on what the first pass left
};

}  // namespace imagetotext::text
