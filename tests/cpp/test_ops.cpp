// imagetotext::normalize_pixels against the formula written with plain ATen ops, on CPU and CUDA.
#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include "catch.hpp"
#include "imagetotext/core/pixel_ops.hpp"

using imagetotext::ops::normalize_pixels;

namespace {
const std::vector<double> kMean = {0.485, 0.456, 0.406}, kStd = {0.229, 0.224, 0.225};

at::Tensor reference(const at::Tensor& pixels, at::ScalarType dtype) {
  const auto mean = at::tensor(std::vector<float>(kMean.begin(), kMean.end()));
  const auto std = at::tensor(std::vector<float>(kStd.begin(), kStd.end()));
  const auto value = (pixels.to(at::kCPU).to(at::kFloat) * (1.0f / 255.0f) - mean) / std;
  return value.movedim(-1, -3).contiguous().to(dtype);
}
}  // namespace

TEST_CASE("normalize_pixels on CPU equals the ATen formula", "[ops]") {
  const auto pixels = at::randint(0, 256, {2, 17, 31, 3}, at::kByte);
  for (auto dtype : {at::kFloat, at::kBFloat16, at::kHalf}) {
    const auto out = normalize_pixels(pixels, kMean, kStd, 1.0 / 255.0, dtype);
    CHECK(out.scalar_type() == dtype);
    CHECK(out.sizes() == at::IntArrayRef({2, 3, 17, 31}));
    CHECK(at::equal(out, reference(pixels, dtype)));
  }
  // Non-contiguous input is accepted.
  const auto strided = pixels.select(0, 1).transpose(0, 1);
  CHECK(at::equal(normalize_pixels(strided, kMean, kStd, 1.0 / 255.0, at::kFloat), reference(strided, at::kFloat)));
}

TEST_CASE("normalize_pixels rejects bad arguments with clear errors", "[ops]") {
  const auto pixels = at::zeros({4, 4, 3}, at::kByte);
  REQUIRE_THROWS_AS(normalize_pixels(pixels.to(at::kFloat), kMean, kStd, 1.0, at::kFloat), c10::ValueError);
  REQUIRE_THROWS_WITH(normalize_pixels(pixels.to(at::kFloat), kMean, kStd, 1.0, at::kFloat), ContainsSubstring("uint8"));
  REQUIRE_THROWS_WITH(normalize_pixels(at::zeros({4, 3}, at::kByte), kMean, kStd, 1.0, at::kFloat),
                      ContainsSubstring("[..., height, width, channels]"));
  REQUIRE_THROWS_WITH(normalize_pixels(pixels, {0.5}, kStd, 1.0, at::kFloat), ContainsSubstring("one value per channel"));
  REQUIRE_THROWS_WITH(normalize_pixels(pixels, kMean, {1, 0, 1}, 1.0, at::kFloat), ContainsSubstring("zero"));
  REQUIRE_THROWS_WITH(normalize_pixels(pixels, kMean, kStd, 1.0, at::kInt), ContainsSubstring("floating"));
}

TEST_CASE("normalize_pixels on CUDA equals the CPU kernel", "[ops][gpu]") {
  const auto pixels = at::randint(0, 256, {3, 65, 129, 3}, at::kByte);
  for (auto dtype : {at::kFloat, at::kBFloat16, at::kHalf}) {
    const auto on_gpu = normalize_pixels(pixels.to(at::kCUDA), kMean, kStd, 1.0 / 255.0, dtype);
    CHECK(on_gpu.is_cuda());
    CHECK(at::equal(on_gpu.cpu(), normalize_pixels(pixels, kMean, kStd, 1.0 / 255.0, dtype)));
  }
}

// resize_pillow's oracle is Pillow itself (tests/python/test_resize.py); here: formulas that follow from
// Pillow's definition, and CUDA against CPU.
using imagetotext::ops::Resample;
using imagetotext::ops::resize_pillow;

TEST_CASE("resize_pillow keeps a constant image constant with every filter", "[ops]") {
  for (auto filter : {Resample::nearest, Resample::lanczos, Resample::bilinear, Resample::bicubic, Resample::box,
                      Resample::hamming}) {
    const auto pixels = at::full({23, 41, 3}, 200, at::kByte);
    const auto out = resize_pillow(pixels, 64, 7, filter);
    CHECK(out.sizes() == at::IntArrayRef({64, 7, 3}));
    CHECK(at::equal(out, at::full({64, 7, 3}, 200, at::kByte)));
  }
}

TEST_CASE("resize_pillow BOX halving is Pillow's rounded pair average, horizontal pass first", "[ops]") {
  // BOX at scale 2 weighs each output by two inputs of 2^21 each: (a + b + 1) >> 1 per pass.
  const auto pixels = at::randint(0, 256, {2, 10, 14, 3}, at::kByte);
  const auto wide = pixels.to(at::kInt);
  const auto horizontal = (wide.slice(2, 0, 14, 2) + wide.slice(2, 1, 14, 2) + 1).floor_divide(2);
  const auto expected = (horizontal.slice(1, 0, 10, 2) + horizontal.slice(1, 1, 10, 2) + 1).floor_divide(2);
  CHECK(at::equal(resize_pillow(pixels, 5, 7, Resample::box), expected.to(at::kByte)));
}

TEST_CASE("resize_pillow rejects bad arguments with clear errors", "[ops]") {
  const auto pixels = at::zeros({4, 4, 3}, at::kByte);
  REQUIRE_THROWS_AS(resize_pillow(pixels.to(at::kFloat), 2, 2, Resample::lanczos), c10::ValueError);
  REQUIRE_THROWS_WITH(resize_pillow(pixels.to(at::kFloat), 2, 2, Resample::lanczos), ContainsSubstring("uint8"));
  REQUIRE_THROWS_WITH(resize_pillow(at::zeros({4, 3}, at::kByte), 2, 2, Resample::lanczos),
                      ContainsSubstring("[..., height, width, channels]"));
  REQUIRE_THROWS_WITH(resize_pillow(at::zeros({4, 4, 5}, at::kByte), 2, 2, Resample::lanczos),
                      ContainsSubstring("1 to 4 channels"));
  REQUIRE_THROWS_WITH(resize_pillow(at::zeros({0, 4, 3}, at::kByte), 2, 2, Resample::lanczos),
                      ContainsSubstring("must not be empty"));
  REQUIRE_THROWS_WITH(resize_pillow(pixels, 0, 2, Resample::bicubic), ContainsSubstring("must be > 0"));
  REQUIRE_THROWS_WITH(resize_pillow(pixels, 2, 2, static_cast<Resample>(7)), ContainsSubstring("unknown filter"));
}

TEST_CASE("resize_pillow on CUDA equals the CPU kernel", "[ops][gpu]") {
  const auto pixels = at::randint(0, 256, {2, 61, 97, 3}, at::kByte);
  for (auto filter : {Resample::nearest, Resample::lanczos, Resample::bilinear, Resample::bicubic, Resample::box,
                      Resample::hamming}) {
    for (auto [height, width] : {std::pair{61, 200}, {17, 97}, {128, 31}, {5, 3}, {61, 97}}) {
      const auto on_gpu = resize_pillow(pixels.to(at::kCUDA), height, width, filter);
      CHECK(on_gpu.is_cuda());
      CHECK(at::equal(on_gpu.cpu(), resize_pillow(pixels, height, width, filter)));
    }
  }
}
