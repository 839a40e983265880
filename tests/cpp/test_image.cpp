// The io layer: decoding files the tests write, the flattening formula, and one clear error per bad input.
#include <ATen/ATen.h>

#include <filesystem>
#include <fstream>
#include <random>
#include <vector>

#include "catch.hpp"
#include "imagetotext/core/error.hpp"
#include "imagetotext/io/image.hpp"
#include "test_files.hpp"

#if IMAGETOTEXT_WITH_IMAGE_CODECS
#include <opencv2/imgcodecs.hpp>
#endif

namespace fs = std::filesystem;
using namespace imagetotext;

using testing::read_bytes;
using testing::scratch_dir;
using testing::write_bytes;

TEST_CASE("missing, directory, empty and non-image files each give one clear error", "[image]") {
  const fs::path dir = scratch_dir();

  const fs::path missing = dir / "no-such-image.png";
  REQUIRE_THROWS_AS(io::load_rgb_image(missing), FileNotFoundError);
  REQUIRE_THROWS_WITH(io::load_rgb_image(missing), ContainsSubstring(missing.string()));

  REQUIRE_THROWS_AS(io::load_rgb_image(dir), ImageError);
  REQUIRE_THROWS_WITH(io::load_rgb_image(dir), ContainsSubstring("directory"));

  const fs::path empty = dir / "empty.jpg";
  write_bytes(empty, {});
  REQUIRE_THROWS_AS(io::load_rgb_image(empty), ImageError);
  REQUIRE_THROWS_WITH(io::load_rgb_image(empty), ContainsSubstring("empty") && ContainsSubstring(empty.string()));

  const fs::path text = dir / "notes.png";
  write_bytes(text, {'h', 'e', 'l', 'l', 'o', '\n'});
  REQUIRE_THROWS_WITH(io::load_rgb_image(text), ContainsSubstring("not a supported image format"));
}

TEST_CASE("a header claiming more pixels than the limit is refused before decoding", "[image]") {
  // A PNG signature and an IHDR for 20000 x 20000 with no pixel data at all: only the header is read.
  std::vector<std::uint8_t> png = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1A, '\n', 0, 0, 0, 13, 'I', 'H', 'D', 'R'};
  for (std::uint32_t v : {20000u, 20000u}) {
    for (int shift : {24, 16, 8, 0}) png.push_back(static_cast<std::uint8_t>(v >> shift));
  }
  png.insert(png.end(), {8, 2, 0, 0, 0, 0, 0, 0, 0});
  const auto info = io::probe_image(png, "bomb.png");
  CHECK(info.width == 20000);
  CHECK(info.height == 20000);
  REQUIRE_THROWS_AS(io::decode_rgb_image(png, "bomb.png"), ImageError);
  REQUIRE_THROWS_WITH(io::decode_rgb_image(png, "bomb.png"),
                      ContainsSubstring("400000000 pixels") && ContainsSubstring("bomb.png"));
}

TEST_CASE("pixels from the caller are checked", "[image]") {
  REQUIRE_THROWS_AS(io::rgb_image_from_pixels(at::zeros({4, 4, 3}, at::kFloat), "x"), InvalidArgumentError);
  REQUIRE_THROWS_AS(io::rgb_image_from_pixels(at::zeros({4, 4}, at::kByte), "x"), InvalidArgumentError);
  REQUIRE_THROWS_AS(io::rgb_image_from_pixels(at::zeros({0, 4, 3}, at::kByte), "x"), InvalidArgumentError);
  const auto strided = at::zeros({3, 8, 4}, at::kByte).permute({1, 0, 2}).narrow(2, 0, 3);
  const auto image = io::rgb_image_from_pixels(strided, "strided");
  CHECK(image.pixels.is_contiguous());
  CHECK(image.height() == 8);
  CHECK(image.width() == 3);
}

#if IMAGETOTEXT_WITH_IMAGE_CODECS

TEST_CASE("lossless formats decode to the exact pixels written, in RGB order", "[image]") {
  const fs::path dir = scratch_dir();
  std::mt19937 rng(7);
  cv::Mat bgr(37, 53, CV_8UC3);
  for (auto it = bgr.begin<cv::Vec3b>(); it != bgr.end<cv::Vec3b>(); ++it) {
    *it = cv::Vec3b(rng() & 0xFF, rng() & 0xFF, rng() & 0xFF);
  }
  for (const char* ext : {".png", ".bmp", ".tiff", ".webp"}) {
    const fs::path path = dir / (std::string("random") + ext);
    std::vector<int> params;
    if (std::string(ext) == ".webp") params = {cv::IMWRITE_WEBP_QUALITY, 101};  // >100 is lossless
    REQUIRE(cv::imwrite(path.string(), bgr, params));
    const auto image = io::load_rgb_image(path);
    INFO(ext);
    REQUIRE(image.pixels.sizes() == at::IntArrayRef({37, 53, 3}));
    CHECK(image.name == "random");
    const auto* px = image.pixels.data_ptr<std::uint8_t>();
    bool same = true;
    for (int y = 0; y < bgr.rows; ++y) {
      for (int x = 0; x < bgr.cols; ++x) {
        const auto& b = bgr.at<cv::Vec3b>(y, x);
        const auto* p = px + (y * bgr.cols + x) * 3;
        same = same && p[0] == b[2] && p[1] == b[1] && p[2] == b[0];
      }
    }
    CHECK(same);
  }
}

TEST_CASE("alpha is composited on white, within half a level of the exact blend", "[image]") {
  // Every (value, alpha) pair: the result must be the exact blend v*a/255 + 255*(1 - a/255) rounded.
  // Bit-exactness against Pillow itself is checked in tests/python/test_image.py.
  const fs::path dir = scratch_dir();
  cv::Mat bgra(256, 256, CV_8UC4);
  for (int a = 0; a < 256; ++a) {
    for (int v = 0; v < 256; ++v) bgra.at<cv::Vec4b>(a, v) = cv::Vec4b(v, v, v, a);
  }
  const fs::path path = dir / "alpha.png";
  REQUIRE(cv::imwrite(path.string(), bgra));
  const auto image = io::load_rgb_image(path);
  const auto* px = image.pixels.data_ptr<std::uint8_t>();
  double worst = 0;
  for (int a = 0; a < 256; ++a) {
    for (int v = 0; v < 256; ++v) {
      const double exact = (v * a + 255.0 * (255 - a)) / 255.0;
      for (int c = 0; c < 3; ++c) worst = std::max(worst, std::abs(px[(a * 256 + v) * 3 + c] - exact));
    }
  }
  CHECK(worst <= 0.5 + 1e-9);
}

TEST_CASE("truncated files of every format are errors, not grey pixels", "[image]") {
  const fs::path dir = scratch_dir();
  cv::Mat bgr(64, 64, CV_8UC3, cv::Scalar(10, 200, 30));
  cv::randu(bgr, 0, 255);
  for (const char* ext : {".png", ".jpg", ".bmp", ".tiff", ".webp"}) {
    const fs::path whole = dir / (std::string("whole") + ext);
    REQUIRE(cv::imwrite(whole.string(), bgr));
    auto bytes = read_bytes(whole);
    REQUIRE_NOTHROW(io::load_rgb_image(whole));
    bytes.resize(bytes.size() / 2);
    const fs::path cut = dir / (std::string("cut") + ext);
    write_bytes(cut, bytes);
    INFO(ext);
    REQUIRE_THROWS_AS(io::load_rgb_image(cut), ImageError);
    REQUIRE_THROWS_WITH(io::load_rgb_image(cut), ContainsSubstring(cut.string()));
  }
}

TEST_CASE("the pixel limit applies to decoded files", "[image]") {
  const fs::path dir = scratch_dir();
  const fs::path path = dir / "small.png";
  REQUIRE(cv::imwrite(path.string(), cv::Mat(10, 20, CV_8UC3, cv::Scalar(1, 2, 3))));
  io::ImageLoadOptions options;
  options.max_pixels = 199;
  REQUIRE_THROWS_WITH(io::load_rgb_image(path, options), ContainsSubstring("200 pixels"));
  options.max_pixels = 200;
  REQUIRE(io::load_rgb_image(path, options).width() == 20);
}

#endif  // IMAGETOTEXT_WITH_IMAGE_CODECS
