#include "tokenizer_config.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <array>
#include <fstream>
#include <iterator>
#include <limits>
#include <map>
#include <string_view>

#include "imagetotext/core/error.hpp"

namespace imagetotext::text {

namespace fs = std::filesystem;

namespace {

// Config files keep their key order: transformers adds missing model-specific tokens in that order.
using ordered_json = nlohmann::ordered_json;

constexpr std::array<std::string_view, 7> kStandardNames = {"bos_token", "eos_token", "unk_token", "sep_token",
                                                            "pad_token", "cls_token", "mask_token"};

bool is_standard_name(std::string_view key) {
  return std::find(kStandardNames.begin(), kStandardNames.end(), key) != kStandardNames.end();
}

struct ConfigFile {
  ordered_json value;
  fs::path path;

  [[noreturn]] void fail(std::string_view field, std::string_view why) const {
    throw CheckpointError(fmt::format("invalid tokenizer file {}: {} {}", path.string(), field, why));
  }
  const ordered_json* find(std::string_view key) const {
    const auto found = value.find(key);
    return found == value.end() || found->is_null() ? nullptr : &*found;
  }
  bool boolean(std::string_view key, bool fallback) const {
    const ordered_json* found = find(key);
    if (found == nullptr) return fallback;
    if (!found->is_boolean()) fail(key, fmt::format("is not true or false: {}", found->dump()));
    return found->get<bool>();
  }
};

ConfigFile read_config_file(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw CheckpointError(fmt::format("cannot open tokenizer file {}: file not found or not readable", path.string()));
  const std::string text{std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
  ConfigFile file{{}, path};
  try {
    file.value = ordered_json::parse(text);
  } catch (const ordered_json::exception& e) {
    std::string why = e.what();
    std::replace_if(why.begin(), why.end(), [](char c) { return c < 0x20 || c > 0x7e; }, '?');
    throw CheckpointError(fmt::format("invalid tokenizer file {}: not valid JSON ({})", path.string(), why));
  }
  if (!file.value.is_object()) file.fail("(the top level)", "is not a JSON object");
  return file;
}

// A token as transformers' AddedToken(**fields): a plain string, or the object form
// {"content": ..., "lstrip": ..., "rstrip": ..., "single_word": ..., "normalized": ..., "special": ...}.
// As in the tokenizers library, `normalized` defaults to the opposite of `special`: the object's own flag,
// or true where transformers makes the object special before building it (special_tokens_map.json).
// Named and extra tokens (`special`) are made special afterwards.
AddedToken parse_token(const ConfigFile& file, const ordered_json& value, const std::string& field, bool special,
                       bool special_before_defaults = false) {
  if (value.is_string()) return {value.get<std::string>(), false, false, false, /*normalized=*/false, true};
  if (!value.is_object()) file.fail(field, fmt::format("is not a string or an AddedToken object: {}", value.dump()));
  const auto flag = [&](std::string_view key, std::optional<bool> fallback) -> std::optional<bool> {
    const auto found = value.find(key);
    if (found == value.end() || found->is_null()) return fallback;
    if (!found->is_boolean()) file.fail(fmt::format("{}.{}", field, key), fmt::format("is not true or false: {}", found->dump()));
    return found->get<bool>();
  };
  const auto content = value.find("content");
  if (content == value.end() || !content->is_string()) file.fail(field + ".content", "is missing or not a string");
  AddedToken token;
  token.content = content->get<std::string>();
  token.special = special || *flag("special", false);
  token.single_word = *flag("single_word", false);
  token.lstrip = *flag("lstrip", false);
  token.rstrip = *flag("rstrip", false);
  token.normalized = *flag("normalized", !(special_before_defaults || *flag("special", false)));
  return token;
}

std::vector<AddedToken> parse_token_list(const ConfigFile& file, const ordered_json& value, const std::string& field,
                                         bool is_map) {
  if (!value.is_array()) file.fail(field, fmt::format("is not a list of tokens: {}", value.dump()));
  std::vector<AddedToken> tokens;
  for (std::size_t i = 0; i < value.size(); ++i) {
    tokens.push_back(parse_token(file, value[i], fmt::format("{}[{}]", field, i), true, is_map));
  }
  return tokens;
}

// The class's defaults for the names the config leaves out (absent; null means none).
std::map<std::string, std::string, std::less<>> class_defaults(TokenizerBackend backend) {
  if (backend == TokenizerBackend::kRoberta) {
    return {{"bos_token", "<s>"},   {"eos_token", "</s>"}, {"sep_token", "</s>"}, {"cls_token", "<s>"},
            {"unk_token", "<unk>"}, {"pad_token", "<pad>"}, {"mask_token", "<mask>"}};
  }
  if (backend == TokenizerBackend::kByteLevel) {
    return {{"bos_token", "<|endoftext|>"}, {"eos_token", "<|endoftext|>"}, {"unk_token", "<|endoftext|>"}};
  }
  return {};
}

TokenizerBackend backend_of(const std::string& tokenizer_class, const ConfigFile* file) {
  if (tokenizer_class == "TokenizersBackend" || tokenizer_class == "PreTrainedTokenizer") return TokenizerBackend::kVerbatim;
  if (tokenizer_class == "GPT2Tokenizer" || tokenizer_class == "CodeGenTokenizer") return TokenizerBackend::kByteLevel;
  if (tokenizer_class == "RobertaTokenizer" || tokenizer_class == "BartTokenizer") return TokenizerBackend::kRoberta;
  file->fail("tokenizer_class",
             fmt::format("'{}' is not supported (supported: TokenizersBackend, PreTrainedTokenizerFast, GPT2Tokenizer, "
                         "CodeGenTokenizer, RobertaTokenizer, BartTokenizer)", tokenizer_class));
}

}  // namespace

PretrainedTokenizerConfig read_pretrained_tokenizer_config(const std::optional<fs::path>& tokenizer_config,
                                                           const std::optional<fs::path>& special_tokens_map,
                                                           const std::optional<std::string>& model_type) {
  PretrainedTokenizerConfig result;
  const ConfigFile config = tokenizer_config ? read_config_file(*tokenizer_config) : ConfigFile{ordered_json::object(), {}};

  // The class (transformers maps "XFast" to X; smolvlm checkpoints name a class that would drop their
  // Digits pre-tokenizer, so transformers loads them verbatim).
  if (const ordered_json* name = config.find("tokenizer_class")) {
    if (!name->is_string()) config.fail("tokenizer_class", "is not a string");
    std::string tokenizer_class = name->get<std::string>();
    if (tokenizer_class.ends_with("Fast")) tokenizer_class.resize(tokenizer_class.size() - 4);
    if (tokenizer_class == "PreTrainedTokenizer") tokenizer_class = "TokenizersBackend";
    if (model_type == "smolvlm") tokenizer_class = "TokenizersBackend";
    result.backend = backend_of(tokenizer_class, &config);
    result.config.tokenizer_class = tokenizer_class;
  }

  // Every field below is checked for its type even where, as in transformers, it changes nothing here.
  for (const std::string_view flag : {"add_bos_token", "add_eos_token", "legacy"}) config.boolean(flag, false);
  result.add_prefix_space = config.boolean("add_prefix_space", false);
  result.config.clean_up_tokenization_spaces = config.boolean("clean_up_tokenization_spaces", false);
  result.config.clean_up_tokenization_spaces_for_bpe =
      config.boolean("clean_up_tokenization_spaces_for_bpe_even_though_it_will_corrupt_output", false);
  if (config.boolean("split_special_tokens", false)) {
    config.fail("split_special_tokens", "true is not supported (special tokens are always matched)");
  }
  if (const ordered_json* length = config.find("model_max_length")) {
    if (length->is_number_integer() && length->get<std::int64_t>() >= 0) {
      result.config.model_max_length = length->get<std::int64_t>();
    } else if (!length->is_number() || length->get<double>() < 0) {
      config.fail("model_max_length", fmt::format("is not a non-negative integer: {}", length->dump()));
    } else if (length->get<double>() < 9.2e18) {
      result.config.model_max_length = static_cast<std::int64_t>(length->get<double>());
    }  // beyond int64 (transformers writes 1e30 for "no limit"): no limit
  }

  // Named tokens: the config's, then special_tokens_map.json's over them when the config has no
  // added_tokens_decoder (transformers reads the map only then).
  std::map<std::string, std::optional<AddedToken>, std::less<>> standard;  // nullopt: explicitly none
  std::vector<std::pair<std::string, AddedToken>> model_specific;
  std::optional<std::vector<AddedToken>> extras;
  const auto set_model_specific = [&](const std::string& key, AddedToken token) {
    const auto found = std::find_if(model_specific.begin(), model_specific.end(), [&](const auto& entry) { return entry.first == key; });
    if (found != model_specific.end()) found->second = std::move(token);
    else model_specific.emplace_back(key, std::move(token));
  };
  const auto read_names = [&](const ConfigFile& file, bool is_map) {
    for (const auto& [key, value] : file.value.items()) {
      if (is_standard_name(key)) {
        standard[key] = value.is_null() ? std::nullopt : std::optional(parse_token(file, value, key, true, is_map));
      } else if (key.ends_with("_token") && (value.is_string() || (value.is_object() && value.contains("content")))) {
        set_model_specific(key, parse_token(file, value, key, true, is_map));
      }
    }
    if (const ordered_json* extra = file.find("extra_special_tokens")) {
      if (extra->is_object()) {
        for (const auto& [key, value] : extra->items()) {
          set_model_specific(key, parse_token(file, value, "extra_special_tokens." + key, true));
        }
      } else {
        std::vector<AddedToken> tokens = parse_token_list(file, *extra, "extra_special_tokens", is_map);
        if (!extras) extras.emplace();
        for (AddedToken& token : tokens) {
          const bool listed = std::any_of(extras->begin(), extras->end(), [&](const AddedToken& t) { return t.content == token.content; });
          if (!listed) extras->push_back(std::move(token));
        }
      }
    }
  };
  read_names(config, false);
  if (!extras && config.find("additional_special_tokens")) {
    extras = parse_token_list(config, *config.find("additional_special_tokens"), "additional_special_tokens", false);
  }

  if (const ordered_json* decoder = config.find("added_tokens_decoder")) {
    if (!decoder->is_object()) config.fail("added_tokens_decoder", "is not a JSON object");
    std::vector<std::pair<std::int64_t, AddedToken>> by_index;
    for (const auto& [index, value] : decoder->items()) {
      const std::string field = fmt::format("added_tokens_decoder.{}", index);
      std::int64_t id = -1;
      try {
        std::size_t used = 0;
        id = std::stoll(index, &used);
        if (used != index.size()) id = -1;
      } catch (const std::exception&) {
      }
      if (id < 0) config.fail(field, "has a key that is not a token id");
      by_index.emplace_back(id, parse_token(config, value, field, false));
    }
    std::stable_sort(by_index.begin(), by_index.end(), [](const auto& a, const auto& b) { return a.first < b.first; });
    result.added_tokens_decoder.emplace();
    for (auto& entry : by_index) result.added_tokens_decoder->push_back(std::move(entry.second));
  } else if (special_tokens_map) {
    const ConfigFile map = read_config_file(*special_tokens_map);
    const bool extras_from_config = extras.has_value();
    read_names(map, true);
    if (!extras_from_config && !extras && map.find("additional_special_tokens")) {
      extras = parse_token_list(map, *map.find("additional_special_tokens"), "additional_special_tokens", true);
    }
  }

  for (const auto& [name, content] : class_defaults(result.backend)) {
    if (!config.value.contains(name) && !standard.contains(name)) standard[name] = AddedToken{content, false, false, false, false, true};
  }
  for (const std::string_view name : kStandardNames) {
    const auto found = standard.find(name);
    if (found == standard.end() || !found->second) continue;
    result.named_tokens.emplace_back(std::string(name), *found->second);
  }
  for (auto& entry : model_specific) result.named_tokens.push_back(std::move(entry));
  for (const auto& [name, token] : result.named_tokens) result.config.special_tokens.push_back({name, token.content});
  if (extras) {
    result.extra_tokens = std::move(*extras);
    for (const AddedToken& token : result.extra_tokens) result.config.extra_special_tokens.push_back(token.content);
  }
  return result;
}

namespace {

json added_token_json(const AddedToken& token) {
  return {{"id", 0u},  // the library assigns ids itself (see AddedVocabulary)
          {"content", token.content}, {"single_word", token.single_word}, {"lstrip", token.lstrip},
          {"rstrip", token.rstrip},   {"normalized", token.normalized},   {"special", token.special}};
}

}  // namespace

void apply_pretrained_config(json& document, const PretrainedTokenizerConfig& config) {
  if (!document.is_object()) return;  // Tokenizer's own checks report it
  if (config.backend != TokenizerBackend::kVerbatim) {
    // The class builds BPE(vocab, merges) with no unknown token, dropout or other options, and its own pieces.
    if (document.contains("model") && document["model"].is_object()) {
      json& model = document["model"];
      for (const char* key : {"unk_token", "dropout", "continuing_subword_prefix", "end_of_word_suffix"}) model.erase(key);
      model["fuse_unk"] = false;
      model["byte_fallback"] = false;
      model["ignore_merges"] = false;
    }
    document.erase("normalizer");
    document["pre_tokenizer"] = {{"type", "ByteLevel"}, {"add_prefix_space", config.add_prefix_space},
                                 {"trim_offsets", true}, {"use_regex", true}};
    document["decoder"] = {{"type", "ByteLevel"}, {"add_prefix_space", true}, {"trim_offsets", true}, {"use_regex", true}};
    if (config.added_tokens_decoder) document["added_tokens"] = json::array();
  }
  if (!document.contains("added_tokens") || document["added_tokens"].is_null()) document["added_tokens"] = json::array();
  json& added = document["added_tokens"];
  if (!added.is_array()) return;  // Tokenizer's own checks report it
  const auto add_missing = [&](const AddedToken& token) {
    const bool present = std::any_of(added.begin(), added.end(), [&](const json& entry) {
      return entry.is_object() && entry.contains("content") && entry["content"] == token.content;
    });
    if (!present) added.push_back(added_token_json(token));
  };
  if (config.added_tokens_decoder) {
    for (const AddedToken& token : *config.added_tokens_decoder) add_missing(token);
  }
  for (const auto& [name, token] : config.named_tokens) add_missing(token);
  for (const AddedToken& token : config.extra_tokens) add_missing(token);
}

std::string clean_up_tokenization(std::string text) {
  const auto replace_all = [&](std::string_view from, std::string_view to) {
    std::string out;
    out.reserve(text.size());
    std::size_t start = 0;
    for (std::size_t at = text.find(from); at != std::string::npos; at = text.find(from, start)) {
      out.append(text, start, at - start);
      out += to;
      start = at + from.size();
    }
    out.append(text, start, std::string::npos);
    text = std::move(out);
  };
  // In transformers' order: each replacement sees what the earlier ones left.
  replace_all(" .", ".");
  replace_all(" ?", "?");
  replace_all(" !", "!");
  replace_all(" ,", ",");
  replace_all(" ' ", "'");
  replace_all(" n't", "n't");
  replace_all(" 'm", "'m");
  replace_all(" 's", "'s");
  replace_all(" 've", "'ve");
  replace_all(" 're", "'re");
  return text;
}

}  // namespace imagetotext::text
