// Tokenizer: tokenizer.json read into the pieces of src/text/, and the library's encode and decode pipelines
// over them (added tokens, pre-tokenizer, BPE, post-processor; ids to tokens, ByteLevel decoder).
#include "imagetotext/text/tokenizer.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <limits>

#include "added_vocabulary.hpp"
#include "bpe.hpp"
#include "imagetotext/core/error.hpp"
#include "pre_tokenizer.hpp"
#include "tokenizer_config.hpp"
#include "tokenizer_json.hpp"
#include "unicode.hpp"

namespace imagetotext::text {

namespace fs = std::filesystem;

namespace {

// The ids a post-processor puts around a single sequence when asked to add special tokens.
struct SpecialTokenFrame {
  std::vector<std::int64_t> before;
  std::vector<std::int64_t> after;
};

// RobertaProcessing's and BertProcessing's ["<s>", 0] form.
std::int64_t named_id(const JsonObject& processor, std::string_view key) {
  const json& value = processor.require(key);
  if (!value.is_array() || value.size() != 2 || !value[0].is_string()) processor.fail(key, "is not [token, id]");
  return as_token_id(value[1], processor, key);
}

// TemplateProcessing's `single` template: special tokens around the one sequence "A".
SpecialTokenFrame parse_template(const JsonObject& processor) {
  const JsonObject special_tokens = processor.object("special_tokens");
  SpecialTokenFrame frame;
  bool sequence_seen = false;
  for (const JsonObject& piece : processor.objects("single")) {
    if (piece.find("Sequence") != nullptr) {
      if (sequence_seen) piece.fail("Sequence", "appears twice (a single template holds one sequence)");
      sequence_seen = true;
      continue;
    }
    const std::string name = piece.object("SpecialToken").string("id");
    const JsonObject token = special_tokens.object(name);
    const json& ids = token.require("ids");
    if (!ids.is_array()) token.fail("ids", "is not a list");
    for (const json& id : ids) (sequence_seen ? frame.after : frame.before).push_back(as_token_id(id, token, "ids"));
  }
  if (!sequence_seen) processor.fail("single", "has no Sequence piece");
  return frame;
}

// Adds what `processor` puts around a sequence to `frame` (processors of a Sequence wrap one another).
void parse_post_processor(const JsonObject& processor, SpecialTokenFrame& frame) {
  const std::string type = processor.string("type");
  SpecialTokenFrame inner;
  if (type == "ByteLevel") {
    return;  // it only trims offsets
  } else if (type == "RobertaProcessing" || type == "BertProcessing") {
    inner = {{named_id(processor, "cls")}, {named_id(processor, "sep")}};
  } else if (type == "TemplateProcessing") {
    inner = parse_template(processor);
  } else if (type == "Sequence") {
    for (const JsonObject& element : processor.objects("processors")) parse_post_processor(element, frame);
    return;
  } else {
    processor.fail("type",
                   fmt::format("'{}' is not supported (supported: ByteLevel, RobertaProcessing, BertProcessing, "
                               "TemplateProcessing, Sequence)", type));
  }
  frame.before.insert(frame.before.begin(), inner.before.begin(), inner.before.end());
  frame.after.insert(frame.after.end(), inner.after.begin(), inner.after.end());
}

std::vector<AddedToken> parse_added_tokens(const JsonObject& root) {
  std::vector<AddedToken> tokens;
  if (root.find("added_tokens") == nullptr) return tokens;
  for (const JsonObject& entry : root.objects("added_tokens")) {
    entry.id("id");  // required by the format, though the library assigns ids itself (see AddedVocabulary)
    tokens.push_back({entry.string("content"), entry.boolean("single_word", false), entry.boolean("lstrip", false),
                      entry.boolean("rstrip", false), entry.boolean("normalized", true), entry.boolean("special", false)});
  }
  return tokens;
}

// Fields that would change encode's output in ways this library does not implement are refused.
void check_unsupported_fields(const JsonObject& root) {
  if (const json* version = root.find("version"); version != nullptr && *version != "1.0") {
    root.fail("version", fmt::format("{} is not supported (this library reads version \"1.0\")", version->dump()));
  }
  if (root.find("normalizer") != nullptr) {
    root.fail("normalizer", fmt::format("{} is not supported (the model families use none)", root.require("normalizer").dump()));
  }
  if (root.find("truncation") != nullptr) root.fail("truncation", "is not supported (encode never truncates)");
  if (const json* padding = root.find("padding"); padding != nullptr) {
    // Padding to the longest sequence of a batch changes nothing for one sequence; a fixed length would.
    const JsonObject object = root.object("padding");
    if (object.require("strategy") != "BatchLongest") root.fail("padding", "with a fixed length is not supported");
  }
}

bool parse_byte_level_decoder(const JsonObject& root) {
  if (root.find("decoder") == nullptr) return false;
  const JsonObject decoder = root.object("decoder");
  const std::string type = decoder.string("type");
  if (type != "ByteLevel") decoder.fail("type", fmt::format("'{}' is not supported (supported: ByteLevel)", type));
  return true;
}

JsonObject root_of(const json& root, const fs::path& path) {
  if (!root.is_object()) throw CheckpointError(fmt::format("invalid tokenizer file {}: not a JSON object", path.string()));
  return {root, "", path};
}

}  // namespace

namespace detail {

struct TokenizerData {
  explicit TokenizerData(const JsonObject& root)
      : path(root.path),
        model(root.object("model")),
        added(parse_added_tokens(root), model),
        pre_tokenizer(parse_pre_tokenizer(root)),
        byte_level_decoder(parse_byte_level_decoder(root)) {
    check_unsupported_fields(root);
    if (root.find("post_processor") != nullptr) parse_post_processor(root.object("post_processor"), special_frame);
  }

  fs::path path;
  Bpe model;
  AddedVocabulary added;
  std::vector<PreTokenizerStep> pre_tokenizer;
  SpecialTokenFrame special_frame;
  bool byte_level_decoder;
  TokenizerConfig config;
};

}  // namespace detail

Tokenizer::Tokenizer(std::shared_ptr<const detail::TokenizerData> data) : data_(std::move(data)) {}

Tokenizer Tokenizer::from_file(const fs::path& path) {
  const json root = read_json_file(path);
  return Tokenizer(std::make_shared<const detail::TokenizerData>(root_of(root, path)));
}

namespace {

// config.json's model_type, which decides the class for a few model types (see from_pretrained).
std::optional<std::string> model_type_of(const std::optional<fs::path>& model_config) {
  if (!model_config) return std::nullopt;
  const json config = read_json_file(*model_config);
  const auto found = config.is_object() ? config.find("model_type") : config.end();
  if (found == config.end() || !found->is_string()) return std::nullopt;
  return found->get<std::string>();
}

}  // namespace

Tokenizer Tokenizer::from_pretrained(std::string_view repo, std::string_view revision, const io::HubOptions& hub) {
  const fs::path path = io::hub_file(repo, "tokenizer.json", revision, hub);
  const PretrainedTokenizerConfig pretrained = read_pretrained_tokenizer_config(
      io::optional_hub_file(repo, "tokenizer_config.json", revision, hub),
      io::optional_hub_file(repo, "special_tokens_map.json", revision, hub),
      model_type_of(io::optional_hub_file(repo, "config.json", revision, hub)));
  json document = read_json_file(path);
  apply_pretrained_config(document, pretrained);
  auto data = std::make_shared<detail::TokenizerData>(root_of(document, path));
  data->config = pretrained.config;
  if (pretrained.backend == TokenizerBackend::kRoberta) {
    // RobertaTokenizer sets its post-processor from its cls and sep tokens, whatever tokenizer.json holds.
    const auto id_of = [&](std::string_view name) {
      const auto named = std::find_if(pretrained.named_tokens.begin(), pretrained.named_tokens.end(),
                                      [&](const auto& entry) { return entry.first == name; });
      std::optional<std::uint32_t> id;
      if (named != pretrained.named_tokens.end()) {
        id = data->added.token_to_id(named->second.content);
        if (!id) id = data->model.token_to_id(named->second.content);
      }
      if (!id) {
        throw CheckpointError(fmt::format("{}: a {} needs a {}, and the tokenizer config sets it to none",
                                          path.string(), pretrained.config.tokenizer_class, name));
      }
      return static_cast<std::int64_t>(*id);
    };
    data->special_frame = {{id_of("cls_token")}, {id_of("sep_token")}};
  }
  return Tokenizer(std::move(data));
}

const fs::path& Tokenizer::path() const noexcept { return data_->path; }

const TokenizerConfig& Tokenizer::config() const noexcept { return data_->config; }

std::optional<std::string> Tokenizer::special_token(std::string_view name) const {
  for (const NamedSpecialToken& token : data_->config.special_tokens) {
    if (token.name == name) return token.content;
  }
  return std::nullopt;
}

std::vector<std::int64_t> Tokenizer::encode(std::string_view text, bool add_special_tokens) const {
  if (!is_valid_utf8(text)) throw InvalidArgumentError("the text to encode is not valid UTF-8");
  std::vector<std::int64_t> ids;
  if (add_special_tokens) ids = data_->special_frame.before;
  std::vector<std::string> words;
  for (const TextPiece& piece : data_->added.split(text)) {
    if (piece.id) {
      ids.push_back(*piece.id);
      continue;
    }
    words.clear();
    pre_tokenize(text.substr(piece.begin, piece.end - piece.begin), data_->pre_tokenizer, words);
    for (const std::string& word : words) data_->model.tokenize(word, ids);
  }
  if (add_special_tokens) ids.insert(ids.end(), data_->special_frame.after.begin(), data_->special_frame.after.end());
  return ids;
}

std::string Tokenizer::decode(std::span<const std::int64_t> ids, bool skip_special_tokens) const {
  std::string text = decode_tokens(ids, skip_special_tokens);
  // transformers 5 applies its clean-up to a BPE model's text only when told twice.
  const TokenizerConfig& config = data_->config;
  if (config.clean_up_tokenization_spaces && config.clean_up_tokenization_spaces_for_bpe) {
    return clean_up_tokenization(std::move(text));
  }
  return text;
}

std::string Tokenizer::decode_tokens(std::span<const std::int64_t> ids, bool skip_special_tokens) const {
  std::vector<std::string> tokens;
  tokens.reserve(ids.size());
  for (const std::int64_t id : ids) {
    std::optional<std::string> token = id_to_token(id);
    if (!token || (skip_special_tokens && data_->added.is_special(*token))) continue;
    tokens.push_back(std::move(*token));
  }
  if (!data_->byte_level_decoder) {
    // Without a decoder the library joins the tokens with spaces.
    std::string joined;
    for (std::size_t i = 0; i < tokens.size(); ++i) joined += (i == 0 ? "" : " ") + tokens[i];
    return joined;
  }
  // ByteLevel: each token's characters back to the bytes they stand for; a token with any other character
  // (an added token such as a run of spaces) gives its own UTF-8 bytes.
  std::string bytes;
  for (const std::string& token : tokens) {
    const std::size_t token_start = bytes.size();
    for (std::size_t offset = 0; offset < token.size(); offset += utf8_length(static_cast<unsigned char>(token[offset]))) {
      const std::optional<std::uint8_t> byte = byte_of_byte_level_character(decode_utf8_at(token, offset));
      if (!byte) {
        bytes.resize(token_start);
        bytes += token;
        break;
      }
      bytes += static_cast<char>(*byte);
    }
  }
  return utf8_lossy(bytes);
}

std::optional<std::int64_t> Tokenizer::token_to_id(std::string_view token) const {
  if (const auto id = data_->added.token_to_id(token)) return *id;
  if (const auto id = data_->model.token_to_id(token)) return *id;
  return std::nullopt;
}

std::optional<std::string> Tokenizer::id_to_token(std::int64_t id) const {
  if (id < 0 || id > std::numeric_limits<std::uint32_t>::max()) return std::nullopt;
  const auto token_id = static_cast<std::uint32_t>(id);
  if (const AddedToken* added = data_->added.token(token_id)) return added->content;
  if (const std::string* token = data_->model.id_to_token(token_id)) return *token;
  return std::nullopt;
}

std::int64_t Tokenizer::vocab_size() const {
  return static_cast<std::int64_t>(data_->model.size() + data_->added.size() - data_->added.count_in(data_->model));
}

}  // namespace imagetotext::text
