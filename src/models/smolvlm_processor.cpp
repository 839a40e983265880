#include "imagetotext/models/smolvlm_processor.hpp"

#include <ATen/ops/from_blob.h>
#include <ATen/ops/stack.h>
#include <fmt/format.h>

#include <algorithm>
#include <cmath>

#include "imagetotext/core/error.hpp"
#include "imagetotext/core/pixel_ops.hpp"

namespace imagetotext::smolvlm {

namespace {
// transformers' MAX_IMAGE_SIZE: no side is resized beyond it.
constexpr std::int64_t kMaxImageSide = 4096;

// Pillow's LANCZOS resize of uint8 [H, W, 3] pixels, bit for bit on either device (core/pixel_ops.hpp); the
// pixels themselves for an unchanged size.
at::Tensor resize_lanczos(const at::Tensor& pixels, std::int64_t height, std::int64_t width) {
  if (pixels.size(0) == height && pixels.size(1) == width) return pixels;
  return ops::resize_pillow(pixels, height, width, ops::Resample::lanczos);
}

// Python's str.isspace() for one code point.
bool is_python_space(char32_t c) {
  return (c >= 0x09 && c <= 0x0d) || (c >= 0x1c && c <= 0x20) || c == 0x85 || c == 0xa0 || c == 0x1680 ||
         (c >= 0x2000 && c <= 0x200a) || c == 0x2028 || c == 0x2029 || c == 0x202f || c == 0x205f || c == 0x3000;
}

// The code point that starts at `s[i]` and its length in bytes (1 for a byte that does not start UTF-8).
std::pair<char32_t, std::size_t> code_point_at(std::string_view s, std::size_t i) {
  const auto b = static_cast<unsigned char>(s[i]);
  std::size_t n = b < 0x80 ? 1 : (b >> 5) == 0x6 ? 2 : (b >> 4) == 0xe ? 3 : (b >> 3) == 0x1e ? 4 : 1;
  if (i + n > s.size()) n = 1;
  if (n == 1) return {b, 1};
  char32_t c = b & (0xff >> (n + 1));
  for (std::size_t k = 1; k < n; ++k) c = (c << 6) | (static_cast<unsigned char>(s[i + k]) & 0x3f);
  return {c, n};
}

std::string_view python_strip(std::string_view s) {
  std::size_t begin = 0;
  while (begin < s.size()) {
    const auto [c, n] = code_point_at(s, begin);
    if (!is_python_space(c)) break;
    begin += n;
  }
  std::size_t end = s.size();
  while (end > begin) {
    std::size_t start = end - 1;  // back to the first byte of the last code point
    while (start > begin && (static_cast<unsigned char>(s[start]) & 0xc0) == 0x80) --start;
    const auto [c, n] = code_point_at(s, start);
    if (start + n != end || !is_python_space(c)) break;
    end = start;
  }
  return s.substr(begin, end - begin);
}
}  // namespace

Processor::Processor(SmolVLMProcessorConfig config, text::Tokenizer tokenizer)
    : config_(std::move(config)), tokenizer_(std::move(tokenizer)) {}

std::pair<std::int64_t, std::int64_t> Processor::resize_output_size(std::int64_t height, std::int64_t width,
                                                                    std::int64_t longest_edge) {
  // Python floats (doubles) and int() truncation, as transformers computes them.
  double aspect = static_cast<double>(width) / static_cast<double>(height);
  if (width >= height) {
    width = longest_edge;
    height = static_cast<std::int64_t>(static_cast<double>(width) / aspect);
    if (height % 2 != 0) ++height;
  } else {
    height = longest_edge;
    width = static_cast<std::int64_t>(static_cast<double>(height) * aspect);
    if (width % 2 != 0) ++width;
  }
  height = std::max<std::int64_t>(height, 1);
  width = std::max<std::int64_t>(width, 1);
  // _resize_output_size_scale_below_upper_bound with MAX_IMAGE_SIZE.
  aspect = static_cast<double>(width) / static_cast<double>(height);
  if (width >= height && width > kMaxImageSide) {
    width = kMaxImageSide;
    height = static_cast<std::int64_t>(static_cast<double>(width) / aspect);
  } else if (height > width && height > kMaxImageSide) {
    height = kMaxImageSide;
    width = static_cast<std::int64_t>(static_cast<double>(height) * aspect);
  }
  return {std::max<std::int64_t>(height, 1), std::max<std::int64_t>(width, 1)};
}

std::pair<std::int64_t, std::int64_t> Processor::vision_encoder_size(std::int64_t height, std::int64_t width,
                                                                     std::int64_t tile) {
  const double aspect = static_cast<double>(width) / static_cast<double>(height);
  auto round_up = [tile](double v) { return static_cast<std::int64_t>(std::ceil(v / static_cast<double>(tile))) * tile; };
  if (width >= height) {
    width = round_up(static_cast<double>(width));
    height = static_cast<std::int64_t>(static_cast<double>(width) / aspect);
    height = round_up(static_cast<double>(height));
  } else {
    height = round_up(static_cast<double>(height));
    width = static_cast<std::int64_t>(static_cast<double>(height) * aspect);
    width = round_up(static_cast<double>(width));
  }
  return {height, width};
}

Tiles Processor::tile(const at::Tensor& pixels) const {
  if (pixels.dim() != 3 || pixels.size(2) != 3 || pixels.scalar_type() != at::kByte || pixels.size(0) < 1 ||
      pixels.size(1) < 1) {
    throw InvalidArgumentError("SmolVLM's processor takes uint8 RGB pixels [height, width, 3] of at least 1x1");
  }
  at::Tensor image = pixels;
  if (config_.do_resize) {
    const auto [h, w] = resize_output_size(image.size(0), image.size(1), config_.longest_edge);
    image = resize_lanczos(image, h, w);
  }
  const std::int64_t side = config_.max_image_size;
  if (!config_.do_image_splitting) return Tiles{resize_lanczos(image, side, side).unsqueeze(0), 0, 0};

  const auto [h, w] = vision_encoder_size(image.size(0), image.size(1), side);
  image = resize_lanczos(image, h, w);
  if (h <= side && w <= side) return Tiles{image.unsqueeze(0), 0, 0};

  const std::int64_t rows = (h - side) / side + 1, cols = (w - side) / side + 1;
  std::vector<at::Tensor> tiles;
  tiles.reserve(static_cast<std::size_t>(rows * cols + 1));
  for (std::int64_t r = 0; r < rows; ++r) {
    for (std::int64_t c = 0; c < cols; ++c) tiles.push_back(image.narrow(0, r * side, side).narrow(1, c * side, side));
  }
  tiles.push_back(resize_lanczos(image, side, side));  // the whole image, aspect not kept
  return Tiles{at::stack(tiles), rows, cols};
}

at::Tensor Processor::normalize(const at::Tensor& tiles, c10::Device device, at::ScalarType dtype) const {
  const std::vector<double> mean = config_.do_normalize ? std::vector<double>(config_.image_mean.begin(), config_.image_mean.end())
                                                        : std::vector<double>{0.0, 0.0, 0.0};
  const std::vector<double> std = config_.do_normalize ? std::vector<double>(config_.image_std.begin(), config_.image_std.end())
                                                       : std::vector<double>{1.0, 1.0, 1.0};
  const double scale = config_.do_rescale ? config_.rescale_factor : 1.0;
  // uint8 on the device (a quarter of float32's bytes had it to cross), then one kernel normalizes there.
  return ops::normalize_pixels(tiles.to(device), mean, std, scale, dtype);
}

std::string Processor::image_prompt(std::int64_t rows, std::int64_t cols, std::int64_t image_seq_len) {
  const std::string fake = "<fake_token_around_image>";
  std::string image_tokens;
  for (std::int64_t i = 0; i < image_seq_len; ++i) image_tokens += "<image>";
  const std::string global = fake + "<global-img>" + image_tokens + fake;
  if (rows == 0 && cols == 0) return global;
  std::string text;
  for (std::int64_t r = 1; r <= rows; ++r) {
    for (std::int64_t c = 1; c <= cols; ++c) text += fake + fmt::format("<row_{}_col_{}>", r, c) + image_tokens;
    text += "\n";
  }
  return text + "\n" + global;
}

std::string Processor::prompt(std::int64_t rows, std::int64_t cols, std::string_view question) const {
  // SmolVLM's chat template for [{"role": "user", "content": [image, text]}] with add_generation_prompt.
  return "<|im_start|>User:" + image_prompt(rows, cols, config_.image_seq_len) + std::string(question) + "<end_of_utterance>\nAssistant:";
}

ProcessorOutput Processor::operator()(const io::RgbImage& image, std::string_view question, c10::Device device,
                                      at::ScalarType dtype) const {
  // The resizes run where the model runs: on a GPU Pillow's integer arithmetic takes about a millisecond, on one
  // CPU core ~100 ms for a 768 x 768 image upscaled to 2048 (measured on the H100 machine). Only the image's
  // uint8 pixels cross to the device.
  const Tiles tiles = tile(image.pixels.to(device));
  ProcessorOutput out;
  out.prompt = prompt(tiles.rows, tiles.cols, question);
  std::vector<std::int64_t> ids = tokenizer_.encode(out.prompt, /*add_special_tokens=*/true);
  out.input_ids = at::from_blob(ids.data(), {1, static_cast<std::int64_t>(ids.size())}, at::kLong).clone();
  out.pixel_values = normalize(tiles.pixels, device, dtype);
  out.rows = tiles.rows;
  out.cols = tiles.cols;
  return out;
}

std::string clean_caption(std::string_view decoded, std::string_view question) {
  std::string_view text = decoded;
  if (const auto at = text.find(question); !question.empty() && at != std::string_view::npos) {
    text = python_strip(text.substr(at + question.size()));
  }
  constexpr std::string_view analysis = "### Analysis and Description:";
  if (const auto at = text.find(analysis); at != std::string_view::npos) text = python_strip(text.substr(0, at));
  constexpr std::string_view assistant = "Assistant: ";
  if (const auto at = text.find(assistant); at != std::string_view::npos) {
    text = python_strip(text.substr(at + assistant.size()));
  }
  return std::string(text);
}

}  // namespace imagetotext::smolvlm
