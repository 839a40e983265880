// Tokenizer: a small hand-written byte-level BPE tokenizer.json with known merges (encode, decode, added
// tokens, post-processor), and one CheckpointError naming the file and field per kind of bad file.
#include <filesystem>
#include <initializer_list>
#include <fstream>
#include <string>
#include <string_view>
#include <vector>

#include "catch.hpp"
#include "imagetotext/core/error.hpp"
#include "imagetotext/text/tokenizer.hpp"
#include "test_files.hpp"

namespace fs = std::filesystem;
using imagetotext::CheckpointError;
using imagetotext::InvalidArgumentError;
using imagetotext::text::Tokenizer;

namespace {

// Ids: the single characters, then what the merges make. "Ġ" is the byte-level space; "Ċ" the newline.
constexpr const char* kModel = R"("model": {
  "type": "BPE", "dropout": null, "unk_token": null, "fuse_unk": false, "byte_fallback": false,
  "ignore_merges": false,
  "vocab": {"a": 0, "b": 1, "c": 2, "Ġ": 3, "Ċ": 4, "1": 5, "2": 6, "ab": 7, "abc": 8, "Ġab": 9, "ĠĠ": 10},
  "merges": ["a b", ["ab", "c"], "Ġ ab", "Ġ Ġ"]
})";

constexpr const char* kAddedTokens = R"("added_tokens": [
  {"id": 11, "content": "<s>", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true},
  {"id": 12, "content": "</s>", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true},
  {"id": 13, "content": "<mask>", "single_word": false, "lstrip": true, "rstrip": false, "normalized": false, "special": true},
  {"id": 14, "content": "cab", "single_word": false, "lstrip": false, "rstrip": false, "normalized": true, "special": false}
])";

constexpr const char* kPipeline = R"(
  "normalizer": null,
  "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
    {"type": "Digits", "individual_digits": true},
    {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true}]},
  "post_processor": {"type": "RobertaProcessing", "sep": ["</s>", 12], "cls": ["<s>", 11],
                     "trim_offsets": true, "add_prefix_space": false},
  "decoder": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true})";

fs::path write_tokenizer(const std::string& name, const std::string& text) {
  const fs::path path = imagetotext::testing::scratch_dir() / name;
  std::ofstream(path, std::ios::binary) << text;
  return path;
}

// A JSON object of the given members.
std::string json_object(std::initializer_list<std::string_view> members) {
  std::string text = "{";
  for (const std::string_view member : members) text.append(text.size() > 1 ? ",\n" : "").append(member);
  return text.append("}");
}

fs::path good_tokenizer() {
  return write_tokenizer("tokenizer.json",
                         json_object({R"("version": "1.0", "truncation": null, "padding": null)", kAddedTokens, kPipeline, kModel}));
}

// A tokenizer file whose `model` is replaced.
fs::path tokenizer_with_model(const std::string& name, const std::string& model) {
  return write_tokenizer(name, json_object({kAddedTokens, kPipeline, "\"model\": " + model}));
}

void require_checkpoint_error(const fs::path& path, const std::string& mention) {
  try {
    Tokenizer::from_file(path);
    FAIL("no CheckpointError for " << path);
  } catch (const CheckpointError& e) {
    const std::string message = e.what();
    CHECK_THAT(message, ContainsSubstring(path.string()));
    CHECK_THAT(message, ContainsSubstring(mention));
  }
}

}  // namespace

TEST_CASE("tokenizer: merges apply lowest rank first", "[tokenizer]") {
  const Tokenizer tokenizer = Tokenizer::from_file(good_tokenizer());
  CHECK(tokenizer.encode("abc") == std::vector<std::int64_t>{8});
  CHECK(tokenizer.encode("abc ab") == std::vector<std::int64_t>{8, 9});
  CHECK(tokenizer.encode("ba") == std::vector<std::int64_t>{1, 0});
  // Three spaces before a letter: "ĠĠ" (the run minus the last space), then "Ġab".
  CHECK(tokenizer.encode("   ab") == std::vector<std::int64_t>{10, 9});
  // Digits are split one by one before the GPT-2 pattern runs.
  CHECK(tokenizer.encode("12") == std::vector<std::int64_t>{5, 6});
  CHECK(tokenizer.encode("").empty());
  // A character outside the vocabulary, with no unknown token, is dropped as the library drops it, and its
  // neighbours then merge.
  CHECK(tokenizer.encode("axb") == std::vector<std::int64_t>{7});
}

TEST_CASE("tokenizer: added tokens are matched before the model", "[tokenizer]") {
  const Tokenizer tokenizer = Tokenizer::from_file(good_tokenizer());
  CHECK(tokenizer.encode("<s>ab</s>") == std::vector<std::int64_t>{11, 7, 12});
  CHECK(tokenizer.encode("ab", true) == std::vector<std::int64_t>{11, 7, 12});
  CHECK(tokenizer.encode("", true) == std::vector<std::int64_t>{11, 12});
  // <mask> takes the spaces on its left (lstrip); "cab" is an added token inside a word.
  CHECK(tokenizer.encode("ab  <mask>") == std::vector<std::int64_t>{7, 13});
  CHECK(tokenizer.encode("abcab") == std::vector<std::int64_t>{7, 14});
  CHECK(tokenizer.token_to_id("<mask>") == 13);
  CHECK(tokenizer.token_to_id("Ġab") == 9);
  CHECK_FALSE(tokenizer.token_to_id("zz"));
  CHECK(tokenizer.id_to_token(14) == "cab");
  CHECK(tokenizer.id_to_token(9) == "Ġab");
  CHECK_FALSE(tokenizer.id_to_token(99));
  CHECK(tokenizer.vocab_size() == 15);
}

TEST_CASE("tokenizer: decode inverts encode", "[tokenizer]") {
  const Tokenizer tokenizer = Tokenizer::from_file(good_tokenizer());
  for (const std::string text : {"abc ab", "   ab\n12", "<s>ab cab</s>", ""}) {
    CHECK(tokenizer.decode(tokenizer.encode(text)) == text);
  }
  const std::vector<std::int64_t> ids{11, 9, 13, 12, 99};
  CHECK(tokenizer.decode(ids) == "<s> ab<mask></s>");
  CHECK(tokenizer.decode(ids, true) == " ab");
  CHECK_THROWS_AS(tokenizer.encode("\xff"), InvalidArgumentError);
}

TEST_CASE("tokenizer: bad files raise CheckpointError naming the file and field", "[tokenizer]") {
  require_checkpoint_error(imagetotext::testing::scratch_dir() / "absent.json", "file not found");
  require_checkpoint_error(write_tokenizer("truncated.json", "{\"model\": {"), "not valid JSON");
  require_checkpoint_error(tokenizer_with_model("wordpiece.json", R"({"type": "WordPiece", "vocab": {}})"),
                           "model.type 'WordPiece' is not supported");
  require_checkpoint_error(tokenizer_with_model("bad_merge.json", R"({"type": "BPE", "vocab": {"a": 0}, "merges": ["a z"]})"),
                           "model.merges[0] uses 'z'");
  require_checkpoint_error(tokenizer_with_model("no_vocab.json", R"({"type": "BPE", "merges": []})"),
                           "model.vocab is missing");
  require_checkpoint_error(write_tokenizer("normalizer.json", json_object({R"("normalizer": {"type": "NFC"})", kModel})),
                           "normalizer");
}
