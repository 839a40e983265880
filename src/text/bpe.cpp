#include "bpe.hpp"

#include <fmt/format.h>

#include <mutex>
#include <queue>

#include "unicode.hpp"

namespace imagetotext::text {
namespace {

// Merges come as "left right" strings (older files) or [left, right] pairs; both give the pair.
std::pair<std::string, std::string> parse_merge(const json& merge, const JsonObject& model, std::size_t index) {
  const std::string key = fmt::format("merges[{}]", index);
  if (merge.is_string()) {
    const std::string text = merge.get<std::string>();
    const std::size_t space = text.find(' ');
    if (space == std::string::npos || text.find(' ', space + 1) != std::string::npos) {
      model.fail(key, fmt::format("is not two tokens separated by one space: {}", merge.dump()));
    }
    return {text.substr(0, space), text.substr(space + 1)};
  }
  if (merge.is_array() && merge.size() == 2 && merge[0].is_string() && merge[1].is_string()) {
    return {merge[0].get<std::string>(), merge[1].get<std::string>()};
  }
  model.fail(key, fmt::format("is neither \"left right\" nor [left, right]: {}", merge.dump()));
}

}  // namespace

Bpe::Bpe(const JsonObject& model) {
  const std::string type = model.string("type");
  if (type != "BPE") model.fail("type", fmt::format("'{}' is not supported (this library reads BPE models)", type));
  for (const std::string_view unsupported : {"continuing_subword_prefix", "end_of_word_suffix"}) {
    if (const json* value = model.find(unsupported); value != nullptr && *value != "") {
      model.fail(unsupported, fmt::format("{} is not supported (byte-level BPE models have none)", value->dump()));
    }
  }
  if (const json* dropout = model.find("dropout"); dropout != nullptr && *dropout != 0.0) {
    model.fail("dropout", fmt::format("{} is not supported (encoding would not be deterministic)", dropout->dump()));
  }
  fuse_unknown_ = model.boolean("fuse_unk", false);
  byte_fallback_ = model.boolean("byte_fallback", false);
  ignore_merges_ = model.boolean("ignore_merges", false);

  const JsonObject vocab = model.object("vocab");
  for (const auto& [token, id] : vocab.value.items()) {
    const std::uint32_t token_id = as_token_id(id, vocab, token);
    vocab_.emplace(token, token_id);
    tokens_by_id_[token_id] = token;
  }
  if (const json* unknown = model.find("unk_token")) {
    if (!unknown->is_string()) model.fail("unk_token", "is not a string");
    const auto found = vocab_.find(unknown->get<std::string>());
    if (found == vocab_.end()) model.fail("unk_token", fmt::format("{} is not in the vocabulary", unknown->dump()));
    unknown_id_ = found->second;
  }

  const json& merges = model.require("merges");
  if (!merges.is_array()) model.fail("merges", "is not a list");
  std::uint32_t rank = 0;
  for (std::size_t index = 0; index < merges.size(); ++index) {
    const json& merge = merges[index];
    // As the tokenizers library: "#version" lines of merges.txt files are not merges and take no rank.
    if (merge.is_string() && merge.get<std::string>().starts_with("#version")) continue;
    const auto [left, right] = parse_merge(merge, model, index);
    const auto id_of = [&](const std::string& token) {
      const auto found = vocab_.find(token);
      if (found == vocab_.end()) {
        model.fail(fmt::format("merges[{}]", index), fmt::format("uses '{}', which is not in the vocabulary", token));
      }
      return found->second;
    };
    // A pair listed twice keeps its last rank, as the library's map does.
    merges_[pair_key(id_of(left), id_of(right))] = Merge{rank++, id_of(left + right)};
  }
}

std::optional<std::uint32_t> Bpe::token_to_id(std::string_view token) const {
  const auto found = vocab_.find(token);
  if (found == vocab_.end()) return std::nullopt;
  return found->second;
}

const std::string* Bpe::id_to_token(std::uint32_t id) const {
  const auto found = tokens_by_id_.find(id);
  return found == tokens_by_id_.end() ? nullptr : &found->second;
}

// One symbol per character; a character outside the vocabulary becomes its bytes' <0xXX> tokens (with
// byte_fallback), else the unknown token (runs fused with fuse_unk), else nothing, as the library does.
std::vector<std::uint32_t> Bpe::split_into_symbols(std::string_view word) const {
  std::vector<std::uint32_t> symbols;
  symbols.reserve(word.size());
  bool pending_unknown = false;
  for (std::size_t offset = 0; offset < word.size();) {
    const std::size_t length = utf8_length(static_cast<unsigned char>(word[offset]));
    const std::string_view character = word.substr(offset, length);
    offset += length;
    if (const auto found = vocab_.find(character); found != vocab_.end()) {
      if (pending_unknown) symbols.push_back(*unknown_id_);
      pending_unknown = false;
      symbols.push_back(found->second);
      continue;
    }
    if (byte_fallback_) {
      std::vector<std::uint32_t> bytes;
      for (const char byte : character) {
        const auto found = vocab_.find(fmt::format("<0x{:02X}>", static_cast<unsigned char>(byte)));
        if (found == vocab_.end()) break;
        bytes.push_back(found->second);
      }
      if (bytes.size() == character.size()) {
        // The library adds fallback bytes without flushing a pending unknown token first.
        symbols.insert(symbols.end(), bytes.begin(), bytes.end());
        continue;
      }
    }
    if (unknown_id_) {
      if (pending_unknown && !fuse_unknown_) symbols.push_back(*unknown_id_);
      pending_unknown = true;
    }
  }
  if (pending_unknown) symbols.push_back(*unknown_id_);
  return symbols;
}

// The library's Word::merge_all: a queue of candidate merges ordered by (rank, position); entries made
// stale by an earlier merge are recognised and skipped when popped.
void Bpe::merge_all(std::vector<std::uint32_t>& ids) const {
  struct Symbol {
    std::uint32_t id;
    std::int32_t previous;
    std::int32_t next;
    bool removed;
  };
  struct Candidate {
    std::uint32_t rank;
    std::int32_t position;
    std::uint32_t new_id;
    bool operator>(const Candidate& other) const {
      return rank != other.rank ? rank > other.rank : position > other.position;
    }
  };
  const std::int32_t count = static_cast<std::int32_t>(ids.size());
  std::vector<Symbol> symbols(ids.size());
  for (std::int32_t i = 0; i < count; ++i) symbols[i] = {ids[i], i - 1, i + 1 < count ? i + 1 : -1, false};

  std::priority_queue<Candidate, std::vector<Candidate>, std::greater<>> queue;
  const auto push_candidate = [&](std::int32_t left) {
    const auto found = merges_.find(pair_key(symbols[left].id, symbols[symbols[left].next].id));
    if (found != merges_.end()) queue.push({found->second.rank, left, found->second.new_id});
  };
  for (std::int32_t i = 0; i + 1 < count; ++i) push_candidate(i);

  while (!queue.empty()) {
    const Candidate top = queue.top();
    queue.pop();
    Symbol& left = symbols[top.position];
    if (left.removed || left.next < 0) continue;
    const std::int32_t right_position = left.next;
    const auto current = merges_.find(pair_key(left.id, symbols[right_position].id));
    if (current == merges_.end() || current->second.new_id != top.new_id) continue;  // stale entry
    left.id = top.new_id;
    left.next = symbols[right_position].next;
    symbols[right_position].removed = true;
    if (left.next >= 0) symbols[left.next].previous = top.position;
    if (left.previous >= 0) push_candidate(left.previous);
    if (left.next >= 0) push_candidate(top.position);
  }
  ids.clear();
  for (const Symbol& symbol : symbols) {
    if (!symbol.removed) ids.push_back(symbol.id);
  }
}

void Bpe::tokenize(std::string_view word, std::vector<std::int64_t>& ids) const {
  if (word.empty()) return;
  if (ignore_merges_) {
    if (const auto found = vocab_.find(word); found != vocab_.end()) {
      ids.push_back(found->second);
      return;
    }
  }
  {
    std::shared_lock lock(cache_mutex_);
    if (const auto cached = cache_.find(word); cached != cache_.end()) {
      ids.insert(ids.end(), cached->second.begin(), cached->second.end());
      return;
    }
  }
  std::vector<std::uint32_t> symbols = split_into_symbols(word);
  merge_all(symbols);
  ids.insert(ids.end(), symbols.begin(), symbols.end());
  if (word.size() < kMaxCachedWordBytes) {
    std::unique_lock lock(cache_mutex_);
    if (cache_.size() < kCacheCapacity) cache_.emplace(std::string(word), std::move(symbols));
  }
}

}  // namespace imagetotext::text
