// model_selector and the ImageToText template through the `test` model.
#include <ATen/ATen.h>

#include <algorithm>
#include <chrono>
#include <thread>

#include "catch.hpp"
#include "imagetotext/core/error.hpp"
#include "imagetotext/image_to_text.hpp"

using namespace imagetotext;

namespace {
ModelOptions no_delay() {
  ModelOptions options;
  options.test_delay = std::chrono::milliseconds(0);
  return options;
}
io::RgbImage grey(const std::string& name) { return io::rgb_image_from_pixels(at::full({2, 3, 3}, 7, at::kByte), name); }
}  // namespace

TEST_CASE("the registry lists the service's and the seeds' model names", "[models]") {
  // The names the service (app/constants.py) and the plans in shared/seeds/ expect, in that order.
  const std::vector<std::string> expected = {
      "test", "Florence-2-base", "Florence-2-base-int4", "Florence-2-large", "Florence-2-large-int4",
      "SmolVLM-256M-Instruct", "SmolVLM-256M-Instruct-int8", "SmolVLM-500M-Instruct",
      "SmolVLM-500M-Instruct-int8", "moondream2", "moondream2-int8"};
  CHECK(available_models() == expected);
  CHECK(find_model(kDefaultModel).repo_id == "microsoft/Florence-2-base");
  CHECK(find_model("Florence-2-large-int4").quantization == Quantization::nf4);
  CHECK(find_model("moondream2-int8").revision == "2025-01-09");
}

TEST_CASE("the test model captions like the service's TestImageToText", "[models]") {
  auto model = model_selector("test", no_delay());
  CHECK(model->model_id() == "test-dummy-model");
  CHECK_FALSE(model->downloaded());
  CHECK(model->extract(grey("cat_meme")) == "Test description for cat_meme");
  CHECK(model->downloaded());  // extract loads on first use, as the service's classes do
  model->download();           // and download() is idempotent
  CHECK(model->downloaded());
}

TEST_CASE("the test model's delay is configurable", "[models]") {
  ModelOptions options;
  options.test_delay = std::chrono::milliseconds(120);
  auto model = model_selector("test", options);
  const auto start = std::chrono::steady_clock::now();
  model->extract(grey("slow"));
  CHECK(std::chrono::steady_clock::now() - start >= std::chrono::milliseconds(120));
}

TEST_CASE("unknown names list the valid ones; unbuilt families say so", "[models]") {
  REQUIRE_THROWS_AS(model_selector("Florence-3"), UnknownModelError);
  REQUIRE_THROWS_WITH(model_selector("Florence-3"),
                      ContainsSubstring("Florence-3") && ContainsSubstring("SmolVLM-500M-Instruct-int8") &&
                          ContainsSubstring("moondream2"));
  for (const std::string name : {"moondream2"}) {
    INFO(name);
    REQUIRE_THROWS_AS(model_selector(name), ModelNotImplementedError);
    REQUIRE_THROWS_WITH(model_selector(name), ContainsSubstring(name));
  }
}

TEST_CASE("eight threads captioning one model get their own captions", "[models]") {
  auto model = model_selector("test", no_delay());
  std::vector<std::string> results(8);
  std::vector<std::thread> threads;
  for (int t = 0; t < 8; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < 50; ++i) {
        const std::string name = "img-" + std::to_string(t) + "-" + std::to_string(i);
        if (model->extract(grey(name)) != "Test description for " + name) results[t] = "mixed up: " + name;
      }
    });
  }
  for (auto& thread : threads) thread.join();
  CHECK(std::all_of(results.begin(), results.end(), [](const std::string& r) { return r.empty(); }));
}

TEST_CASE("devices are checked when the model is selected", "[models]") {
  ModelOptions options = no_delay();
  for (const char* device : {"auto", "cpu", "cuda", "cuda:1"}) {
    options.device = device;
    CHECK_NOTHROW(model_selector("test", options));
  }
  for (const char* device : {"tpu", "cuda:x", "", "mps:0"}) {
    options.device = device;
    INFO(device);
    REQUIRE_THROWS_AS(model_selector("test", options), InvalidArgumentError);
  }
}
