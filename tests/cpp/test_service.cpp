// The weight cache, thread safety, batches, per-request options and out-of-memory handling of
// ImageToText<Family>, through small families written here that count what the template does.
#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include <atomic>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <thread>

#include "catch.hpp"
#include "imagetotext/core/error.hpp"
#include "imagetotext/image_to_text.hpp"

using namespace imagetotext;

namespace {

io::RgbImage grey(const std::string& name) { return io::rgb_image_from_pixels(at::full({2, 3, 3}, 7, at::kByte), name); }

// Counts loads and checks that no two requests on one set of weights ever overlap.
struct CountingFamily {
  struct Model {
    std::string tag;
    std::int64_t max_new_tokens;
  };
  static inline std::atomic<int> loads{0};
  static inline std::atomic<int> in_flight{0};
  static inline std::atomic<int> overlaps{0};
  static inline std::atomic<bool> next_runs_out_of_memory{false};

  static Model load(const ModelSpec& spec, const ModelOptions& options) {
    ++loads;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));  // a slow load, so concurrent first uses meet
    return Model{std::string(spec.name), options.max_new_tokens};
  }
  static std::string caption(Model& model, const io::RgbImage& image) {
    if (in_flight.fetch_add(1) != 0) ++overlaps;
    std::this_thread::sleep_for(std::chrono::microseconds(200));
    in_flight.fetch_sub(1);
    if (next_runs_out_of_memory.exchange(false)) {
      TORCH_CHECK_WITH(OutOfMemoryError, false, "CUDA out of memory. Tried to allocate 20.00 GiB");
    }
    return model.tag + ":" + image.name;
  }
};

// Has both optional hooks.
struct HookedFamily {
  struct Model {
    std::vector<std::size_t> batch_sizes;
  };
  static Model load(const ModelSpec&, const ModelOptions&) { return {}; }
  static std::string caption(Model&, const io::RgbImage& image) { return image.name; }
  static std::string caption(Model&, const io::RgbImage& image, const CaptionOptions& options) {
    return image.name + " up to " + std::to_string(options.max_new_tokens);
  }
  static std::vector<std::string> caption_batch(Model& model, const std::vector<io::RgbImage>& images) {
    model.batch_sizes.push_back(images.size());
    std::vector<std::string> captions;
    for (const auto& image : images) captions.push_back("batched " + image.name);
    return captions;
  }
};

ModelSpec spec_named(const char* name) { return ModelSpec{name, ModelFamily::test, name, "main", Quantization::none}; }

ModelOptions cpu() {
  ModelOptions options;
  options.device = "cpu";
  return options;
}

}  // namespace

TEST_CASE("objects of one model share its weights: loaded by the first job only", "[models]") {
  const ModelSpec spec = spec_named("shared-weights");
  const int before = CountingFamily::loads;
  const auto process_loads = ModelCache::instance().loads();
  // The service's flow: a new object and download() for every job.
  for (int job = 0; job < 5; ++job) {
    ImageToText<CountingFamily> model(spec, cpu());
    CHECK_FALSE(model.downloaded());
    model.download();
    CHECK(model.downloaded());
    CHECK(model.extract(grey("job" + std::to_string(job))) == "shared-weights:job" + std::to_string(job));
  }
  CHECK(CountingFamily::loads - before == 1);
  CHECK(ModelCache::instance().loads() - process_loads == 1);
  CHECK(ModelCache::instance().unload("shared-weights") == 1);
}

TEST_CASE("a different device, dtype, quantization or setting is a different cache entry", "[models]") {
  const ModelSpec spec = spec_named("keyed-weights");
  const int before = CountingFamily::loads;
  ModelOptions options = cpu();
  ImageToText<CountingFamily>(spec, options).download();
  ImageToText<CountingFamily>(spec, options).download();
  options.dtype = "bfloat16";
  ImageToText<CountingFamily>(spec, options).download();
  options.quantization = Quantization::nf4;
  ImageToText<CountingFamily>(spec, options).download();
  options.max_new_tokens = 7;
  ImageToText<CountingFamily> last(spec, options);
  last.download();
  CHECK(CountingFamily::loads - before == 4);
  CHECK(last.spec().quantization == Quantization::nf4);  // the spec reports the effective quantization
  CHECK(ModelCache::instance().unload("keyed-weights") == 4);
  CHECK(ModelCache::instance().unload("keyed-weights") == 0);
}

TEST_CASE("unload frees the weights; the next request loads them again", "[models]") {
  const ModelSpec spec = spec_named("unloaded-weights");
  ImageToText<CountingFamily> model(spec, cpu());
  model.download();
  const int before = CountingFamily::loads;
  const auto entries = ModelCache::instance().entries();
  CHECK(std::any_of(entries.begin(), entries.end(),
                    [](const CachedModelInfo& e) { return e.name == "unloaded-weights" && e.loaded; }));
  CHECK(ModelCache::instance().unload("unloaded-weights") == 1);
  CHECK_FALSE(model.downloaded());
  CHECK(model.extract(grey("again")) == "unloaded-weights:again");
  CHECK(CountingFamily::loads - before == 1);
  CHECK(model.downloaded());
  ModelCache::instance().unload("unloaded-weights");
}

TEST_CASE("eight threads over four objects of one model: one load, requests never overlap or mix", "[models]") {
  const ModelSpec spec = spec_named("threaded-weights");
  const int loads_before = CountingFamily::loads;
  const int overlaps_before = CountingFamily::overlaps;
  std::vector<std::unique_ptr<ImageToText<CountingFamily>>> objects;
  for (int i = 0; i < 4; ++i) objects.push_back(std::make_unique<ImageToText<CountingFamily>>(spec, cpu()));
  std::atomic<int> wrong{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 8; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < 20; ++i) {
        const std::string name = "img-" + std::to_string(t) + "-" + std::to_string(i);
        if (objects[t % 4]->extract(grey(name)) != "threaded-weights:" + name) ++wrong;
      }
    });
  }
  for (auto& thread : threads) thread.join();
  CHECK(wrong == 0);
  CHECK(CountingFamily::loads - loads_before == 1);
  CHECK(CountingFamily::overlaps - overlaps_before == 0);
  ModelCache::instance().unload("threaded-weights");
}

TEST_CASE("out of memory is a DeviceError naming the model, and the model stays usable", "[models]") {
  ImageToText<CountingFamily> model(spec_named("oom-weights"), cpu());
  model.download();
  CountingFamily::next_runs_out_of_memory = true;
  REQUIRE_THROWS_AS(model.extract(grey("big")), DeviceError);
  CountingFamily::next_runs_out_of_memory = true;
  REQUIRE_THROWS_WITH(model.extract(grey("big")),
                      ContainsSubstring("out of memory") && ContainsSubstring("oom-weights"));
  CHECK(model.downloaded());
  CHECK(model.extract(grey("small")) == "oom-weights:small");
  ModelCache::instance().unload("oom-weights");
}

TEST_CASE("families' optional hooks: batches in one call, per-request max_new_tokens", "[models]") {
  ImageToText<HookedFamily> hooked(spec_named("hooked"), cpu());
  CHECK(hooked.extract_batch(std::vector{grey("a"), grey("b"), grey("c")}) ==
        std::vector<std::string>{"batched a", "batched b", "batched c"});
  CHECK(hooked.extract(grey("d"), CaptionOptions{12}) == "d up to 12");

  // A family without the hook: the setting is fixed at load, so asking another one per request is refused.
  ImageToText<CountingFamily> fixed(spec_named("fixed-tokens"), cpu());
  CHECK(fixed.extract(grey("e"), CaptionOptions{0}) == "fixed-tokens:e");
  REQUIRE_THROWS_AS(fixed.extract(grey("e"), CaptionOptions{5}), InvalidArgumentError);
  const auto batch = fixed.extract_batch(std::vector{grey("f"), grey("g")});
  CHECK(batch == std::vector<std::string>{"fixed-tokens:f", "fixed-tokens:g"});
  ModelCache::instance().unload("hooked");
  ModelCache::instance().unload("fixed-tokens");
}

TEST_CASE("clear frees every cached model", "[models]") {
  ImageToText<CountingFamily>(spec_named("cleared-1"), cpu()).download();
  ImageToText<CountingFamily>(spec_named("cleared-2"), cpu()).download();
  CHECK(ModelCache::instance().clear() >= 2);
  CHECK(ModelCache::instance().entries().empty());
}

TEST_CASE("load_model finds the family in config.json's model_type", "[models]") {
  CHECK(family_of_model_type("idefics3", "x") == ModelFamily::smolvlm);
  CHECK(family_of_model_type("smolvlm", "x") == ModelFamily::smolvlm);
  CHECK(family_of_model_type("florence2", "x") == ModelFamily::florence2);
  CHECK(family_of_model_type("moondream1", "x") == ModelFamily::moondream2);
  REQUIRE_THROWS_WITH(family_of_model_type("bert", "some/config.json"),
                      ContainsSubstring("some/config.json") && ContainsSubstring("'bert'"));

  const auto dir = std::filesystem::temp_directory_path() / "imagetotext_load_model_test";
  std::filesystem::create_directories(dir);
  std::ofstream(dir / "config.json") << R"({"model_type": "bert"})";
  REQUIRE_THROWS_AS(load_model(dir.string()), CheckpointError);
  std::filesystem::remove(dir / "config.json");
  REQUIRE_THROWS_WITH(load_model(dir.string()), ContainsSubstring("config.json"));
  std::filesystem::remove_all(dir);
}
