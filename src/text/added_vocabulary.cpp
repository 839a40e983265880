#include "added_vocabulary.hpp"

#include <algorithm>

#include "regex.hpp"
#include "unicode.hpp"

namespace imagetotext::text {
namespace {

// Rust's regex `\w`, which the library uses to decide whether a single_word token touches a word.
bool is_word_character_at(std::string_view text, std::size_t offset) {
  static const Regex word_character(R"([\p{Alphabetic}\p{M}\p{Nd}\p{Pc}\x{200C}\x{200D}])");
  return word_character.matches_at(text, offset);
}

// Where the run of White_Space that ends `text` begins (text.size() when there is none).
std::size_t trailing_space_start(std::string_view text) {
  std::size_t start = text.size();
  while (start > 0) {
    const std::size_t previous = previous_utf8_start(text, start);
    if (!is_white_space(decode_utf8_at(text, previous))) break;
    start = previous;
  }
  return start;
}

// How many bytes of White_Space begin `text`.
std::size_t leading_space_length(std::string_view text) {
  std::size_t end = 0;
  while (end < text.size() && is_white_space(decode_utf8_at(text, end))) {
    end += utf8_length(static_cast<unsigned char>(text[end]));
  }
  return end;
}

}  // namespace

void AddedVocabulary::Matcher::insert(std::string_view content, std::uint32_t id) {
  std::uint32_t node = 0;
  for (const char c : content) {
    const auto byte = static_cast<unsigned char>(c);
    auto& children = nodes_[node].children;
    const auto child = std::find_if(children.begin(), children.end(), [&](const auto& edge) { return edge.first == byte; });
    if (child != children.end()) {
      node = child->second;
    } else {
      const auto next = static_cast<std::uint32_t>(nodes_.size());
      children.emplace_back(byte, next);
      nodes_.emplace_back();
      node = next;
    }
  }
  nodes_[node].id = id;
  first_bytes_[static_cast<unsigned char>(content.front())] = true;
}

std::optional<std::pair<std::size_t, std::uint32_t>> AddedVocabulary::Matcher::longest_at(std::string_view text,
                                                                                          std::size_t offset) const {
  if (!first_bytes_[static_cast<unsigned char>(text[offset])]) return std::nullopt;
  std::optional<std::pair<std::size_t, std::uint32_t>> longest;
  std::uint32_t node = 0;
  for (std::size_t i = offset; i < text.size(); ++i) {
    const auto byte = static_cast<unsigned char>(text[i]);
    const auto& children = nodes_[node].children;
    const auto child = std::find_if(children.begin(), children.end(), [&](const auto& edge) { return edge.first == byte; });
    if (child == children.end()) break;
    node = child->second;
    if (nodes_[node].id) longest = {i + 1, *nodes_[node].id};
  }
  return longest;
}

AddedVocabulary::AddedVocabulary(std::vector<AddedToken> tokens, const Bpe& model) {
  auto next_id = static_cast<std::uint32_t>(model.size());
  for (AddedToken& token : tokens) {
    if (token.content.empty()) continue;
    std::optional<std::uint32_t> id = token_to_id(token.content);
    if (!id) id = model.token_to_id(token.content);
    if (!id) id = next_id++;
    ids_by_content_[token.content] = *id;
    tokens_by_id_[*id] = std::move(token);  // a content listed twice keeps its last flags
  }
  for (const auto& [id, token] : tokens_by_id_) {
    (token.normalized ? normalized_matcher_ : raw_matcher_).insert(token.content, id);
  }
}

std::optional<std::uint32_t> AddedVocabulary::token_to_id(std::string_view content) const {
  const auto found = ids_by_content_.find(content);
  if (found == ids_by_content_.end()) return std::nullopt;
  return found->second;
}

const AddedToken* AddedVocabulary::token(std::uint32_t id) const {
  const auto found = tokens_by_id_.find(id);
  return found == tokens_by_id_.end() ? nullptr : &found->second;
}

bool AddedVocabulary::is_special(std::string_view content) const {
  const auto id = token_to_id(content);
  return id && tokens_by_id_.at(*id).special;
}

std::size_t AddedVocabulary::count_in(const Bpe& model) const {
  return static_cast<std::size_t>(std::count_if(ids_by_content_.begin(), ids_by_content_.end(), [&](const auto& entry) {
    return model.token_to_id(entry.first).has_value();
  }));
}

void AddedVocabulary::split_with(const Matcher& matcher, std::string_view text, std::size_t base,
                                 std::vector<TextPiece>& pieces) const {
  const auto add_piece = [&](std::size_t begin, std::size_t end, std::optional<std::uint32_t> id) {
    if (end > begin) pieces.push_back({base + begin, base + end, id});  // the library drops empty pieces
  };
  if (matcher.empty()) return add_piece(0, text.size(), std::nullopt);
  std::size_t piece_start = 0;  // the library's start_offset: where the text not yet given to a piece begins
  std::size_t offset = 0;
  while (offset < text.size()) {
    const auto match = matcher.longest_at(text, offset);
    if (!match) {
      ++offset;
      continue;
    }
    std::size_t start = offset;
    std::size_t stop = match->first;
    const AddedToken& token = tokens_by_id_.at(match->second);
    // Matches never overlap: the search goes on after this one, even if it is then discarded.
    offset = stop;
    if (token.single_word) {
      const bool word_before = start > 0 && is_word_character_at(text, previous_utf8_start(text, start));
      const bool word_after = stop < text.size() && is_word_character_at(text, stop);
      if (word_before || word_after) continue;
    }
    if (token.lstrip) start = std::max(trailing_space_start(text.substr(0, start)), piece_start);
    if (token.rstrip) stop += leading_space_length(text.substr(stop));
    if (piece_start < start) add_piece(piece_start, start, std::nullopt);
    add_piece(start, stop, match->second);
    piece_start = stop;
  }
  add_piece(piece_start, text.size(), std::nullopt);
}

std::vector<TextPiece> AddedVocabulary::split(std::string_view text) const {
  std::vector<TextPiece> first_pass;
  split_with(raw_matcher_, text, 0, first_pass);
  if (normalized_matcher_.empty()) return first_pass;
  std::vector<TextPiece> pieces;
  pieces.reserve(first_pass.size());
  for (const TextPiece& piece : first_pass) {
    if (piece.id) {
      pieces.push_back(piece);
    } else {
      // No normalizer is supported, so the normalized text is the text itself.
      split_with(normalized_matcher_, text.substr(piece.begin, piece.end - piece.begin), piece.begin, pieces);
    }
  }
  return pieces;
}

}  // namespace imagetotext::text
