// The BPE model of tokenizer.json: a vocabulary, ranked merges, and the merge loop of the tokenizers library
// (lowest rank first, leftmost first among equal ranks), with a cache of words already split.
#pragma once

#include <cstdint>
#include <optional>
#include <shared_mutex>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "tokenizer_json.hpp"

namespace imagetotext::text {

// Hashing that accepts a string_view for a std::string key, so lookups need no copy.
struct StringHash {
  using is_transparent = void;
  std::size_t operator()(std::string_view text) const noexcept { return std::hash<std::string_view>{}(text); }
};
using TokenMap = std::unordered_map<std::string, std::uint32_t, StringHash, std::equal_to<>>;

class Bpe {
 public:
  // `model` is tokenizer.json's "model" object; CheckpointError for anything invalid or unsupported.
  explicit Bpe(const JsonObject& model);

  // Appends the ids of one pre-tokenized word.
  void tokenize(std::string_view word, std::vector<std::int64_t>& ids) const;

  std::optional<std::uint32_t> token_to_id(std::string_view token) const;
  const std::string* id_to_token(std::uint32_t id) const;
  std::size_t size() const noexcept { return vocab_.size(); }

 private:
  struct Merge {
    std::uint32_t rank;
    std::uint32_t new_id;
  };
  static std::uint64_t pair_key(std::uint32_t left, std::uint32_t right) {
    return (static_cast<std::uint64_t>(left) << 32) | right;
  }
  std::vector<std::uint32_t> split_into_symbols(std::string_view word) const;
  void merge_all(std::vector<std::uint32_t>& symbols) const;

  TokenMap vocab_;
  std::unordered_map<std::uint32_t, std::string> tokens_by_id_;
  std::unordered_map<std::uint64_t, Merge> merges_;
  std::optional<std::uint32_t> unknown_id_;
  bool fuse_unknown_ = false;
  bool byte_fallback_ = false;
  bool ignore_merges_ = false;

  // Words already merged: the same words recur in any text. Bounded, so a long-lived tokenizer fed
  // arbitrary text does not grow without limit.
  static constexpr std::size_t kCacheCapacity = 100'000;
  static constexpr std::size_t kMaxCachedWordBytes = 256;
  mutable std::shared_mutex cache_mutex_;
  mutable std::unordered_map<std::string, std::vector<std::uint32_t>, StringHash, std::equal_to<>> cache_;
};

}  // namespace imagetotext::text
