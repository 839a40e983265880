// SmolVLM's processor geometry and prompt layout (the formulas of transformers' Idefics3 image processor and
// processor, shared/reference/vlm_models.md A.2), the service's caption clean-up, and model_selector's
// SmolVLM names. Parity with transformers itself is in tests/python/test_smolvlm.py.
#include <ATen/ATen.h>

#include <string>

#include "catch.hpp"
#include "imagetotext/core/error.hpp"
#include "imagetotext/image_to_text.hpp"
#include "imagetotext/models/smolvlm.hpp"

using namespace imagetotext;
using smolvlm::Processor;

namespace {
std::size_t count(const std::string& text, const std::string& piece) {
  std::size_t n = 0;
  for (auto at = text.find(piece); at != std::string::npos; at = text.find(piece, at + piece.size())) ++n;
  return n;
}
}  // namespace

TEST_CASE("SmolVLM resize sizes follow Idefics3's formulas", "[models]") {
  using Size = std::pair<std::int64_t, std::int64_t>;
  // (height, width): longest edge to 2048, the other by aspect, int() then rounded up to even.
  CHECK(Processor::resize_output_size(480, 640, 2048) == Size{1536, 2048});
  CHECK(Processor::resize_output_size(1, 1, 2048) == Size{2048, 2048});
  CHECK(Processor::resize_output_size(17, 300, 2048) == Size{116, 2048});   // int(2048 * 17 / 300) = 116
  CHECK(Processor::resize_output_size(300, 17, 2048) == Size{2048, 116});
  CHECK(Processor::resize_output_size(3000, 4000, 2048) == Size{1536, 2048});
  CHECK(Processor::resize_output_size(1000, 3, 2048) == Size{2048, 6});     // int(6.144) = 6, already even
  CHECK(Processor::resize_output_size(7, 1000, 2048) == Size{14, 2048});    // int(14.336) = 14
  CHECK(Processor::resize_output_size(100, 33, 2048) == Size{2048, 676});   // int(675.84) = 675, odd: 676
  CHECK(Processor::resize_output_size(33, 100, 2048) == Size{676, 2048});
  // Then up to multiples of the 512 tile.
  CHECK(Processor::vision_encoder_size(1536, 2048, 512) == Size{1536, 2048});
  CHECK(Processor::vision_encoder_size(116, 2048, 512) == Size{512, 2048});
  CHECK(Processor::vision_encoder_size(2048, 116, 512) == Size{2048, 512});
}

TEST_CASE("SmolVLM's image prompt has the processor's layout", "[models]") {
  const std::string fake = "<fake_token_around_image>";
  std::string image4 = "<image><image><image><image>";
  const std::string global = fake + "<global-img>" + image4 + fake;
  CHECK(Processor::image_prompt(0, 0, 4) == global);
  CHECK(Processor::image_prompt(1, 2, 4) ==
        fake + "<row_1_col_1>" + image4 + fake + "<row_1_col_2>" + image4 + "\n\n" + global);
  const std::string square = Processor::image_prompt(4, 4, 64);  // any square image: 17 tiles
  CHECK(count(square, "<image>") == 17 * 64);
  CHECK(count(square, "<row_") == 16);
  CHECK(count(square, "\n") == 5);
  CHECK(count(square, fake) == 18);
  CHECK(square.find("<row_4_col_4>") != std::string::npos);
}

TEST_CASE("SmolVLM's caption clean-up is the service's", "[models]") {
  CHECK(smolvlm::clean_caption("User:\n\nCan you describe this image?\nAssistant: A cat.") == "A cat.");
  CHECK(smolvlm::clean_caption("Can you describe this image?\nAssistant:  A dog.\n\n### Analysis and Description:\n1.") ==
        "A dog.");
  CHECK(smolvlm::clean_caption("  no markers \n") == "  no markers \n");  // stripped only where a marker was cut
  CHECK(smolvlm::clean_caption("Assistant: \xc2\xa0 spaced \xe3\x80\x80") == "spaced");  // U+00A0, U+3000
  CHECK(smolvlm::clean_caption("") == "");
}

TEST_CASE("model_selector builds the SmolVLM names; a missing checkpoint is a CheckpointError", "[models]") {
  ModelOptions options;
  options.device = "cpu";
  options.checkpoint = "/nonexistent/smolvlm-checkpoint";
  options.hub.offline = true;
  for (const std::string name : {"SmolVLM-256M-Instruct", "SmolVLM-256M-Instruct-int8", "SmolVLM-500M-Instruct",
                                 "SmolVLM-500M-Instruct-int8"}) {
    INFO(name);
    auto model = model_selector(name, options);
    CHECK(model->name() == name);
    CHECK_FALSE(model->downloaded());
    REQUIRE_THROWS_AS(model->download(), CheckpointError);
  }
}

TEST_CASE("greedy search over rows: each row ends at its own end token, the search when all have", "[models]") {
  // A scripted model: row r picks script[r][s] at step s (one-hot logits), whatever it is fed.
  constexpr std::int64_t kEnd = 99, kPad = 7, kVocab = 100;
  const std::vector<std::vector<std::int64_t>> script = {
      {5, 6, kEnd, 8, 9, 10, 11, 12}, {1, kEnd, 2, 2, 2, 2, 2, 2}, {3, 4, 5, 6, kEnd, 1, 1, 1}};
  const auto rows = static_cast<std::int64_t>(script.size());
  auto logits_at = [&](std::size_t step) {
    at::Tensor logits = at::zeros({rows, kVocab});
    for (std::int64_t r = 0; r < rows; ++r) logits[r][script[r][step]] = 1.0;
    return logits;
  };
  for (const std::int64_t lookahead : {1, 3, 4}) {
    for (const std::int64_t max_new : {3, 8}) {
      text::GreedySearchOptions options;
      options.max_new_tokens = max_new;
      options.eos_token_ids = {kEnd};
      options.pad_token_id = kPad;
      options.keep_logits = true;
      std::size_t steps = 1;
      auto advance = [&](const std::vector<std::int64_t>& previous, std::int64_t n, std::vector<at::Tensor>* logits) {
        // A finished row is fed the pad token, a live one its last token (transformers' generate).
        for (std::int64_t r = 0; r < rows; ++r) {
          const auto& row = script[r];
          const bool ended = std::find(row.begin(), row.begin() + steps, kEnd) != row.begin() + steps;
          CHECK(previous[r] == (ended ? kPad : row[steps - 1]));
        }
        std::vector<std::int64_t> picked;
        for (std::int64_t i = 0; i < n; ++i, ++steps) {
          if (logits) logits->push_back(logits_at(steps));
          for (std::int64_t r = 0; r < rows; ++r) picked.push_back(script[r][steps]);
        }
        return picked;
      };
      const auto results = text::greedy_search_rows(logits_at(0), advance, options, lookahead);
      REQUIRE(results.size() == 3);
      CHECK(results[0].tokens == std::vector<std::int64_t>{5, 6, kEnd});
      CHECK(results[1].tokens == std::vector<std::int64_t>{1, kEnd});
      CHECK(results[0].stopped_on_eos);
      CHECK(results[1].stopped_on_eos);
      if (max_new == 3) {
        CHECK(results[2].tokens == std::vector<std::int64_t>{3, 4, 5});
        CHECK_FALSE(results[2].stopped_on_eos);
      } else {
        CHECK(results[2].tokens == std::vector<std::int64_t>{3, 4, 5, 6, kEnd});
        CHECK(results[2].stopped_on_eos);
        // Steps stop once every row has ended: 5 steps, up to lookahead - 1 more run ahead of the host.
        CHECK(steps >= 5);
        CHECK(steps < static_cast<std::size_t>(5 + lookahead));
      }
      for (const auto& row : results) {
        REQUIRE(row.logits.size() == row.tokens.size());
        for (std::size_t s = 0; s < row.tokens.size(); ++s) {
          CHECK(row.logits[s].argmax().item<std::int64_t>() == row.tokens[s]);
        }
      }
    }
  }
}
