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
