// SmolVLM's processor (transformers' Idefics3Processor with the Pillow image backend): an image becomes
// tiles (longest edge resized to size.longest_edge, then to multiples of the tile side, cut row-major into
// tiles plus the whole image resized to one tile, last), their pixels rescaled and normalized, and the chat
// prompt with one block of <image> tokens per tile:
//
//   <|im_start|>User:  <fake_token_around_image><row_1_col_1><image>*S ... \n   (one line per tile row)
//                      \n<fake_token_around_image><global-img><image>*S<fake_token_around_image>
//                      Can you describe this image?<end_of_utterance>\nAssistant:
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>

#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "imagetotext/io/image.hpp"
#include "imagetotext/models/smolvlm_config.hpp"
#include "imagetotext/text/tokenizer.hpp"

namespace imagetotext::smolvlm {

// The service's question.
inline constexpr std::string_view kServiceQuestion = "Can you describe this image?";

// An image cut into tiles, still uint8 [tiles, side, side, 3] (or one [1, H, W, 3] tile when the image needs
// no splitting), with the tile grid (0 x 0 when it was not split).
struct Tiles {
  at::Tensor pixels;
  std::int64_t rows = 0;
  std::int64_t cols = 0;
};

// What the model takes for one image and one question.
struct ProcessorOutput {
  at::Tensor input_ids;     // int64 [1, length] on the CPU
  at::Tensor pixel_values;  // [tiles, 3, H, W] of the requested dtype and device
  std::string prompt;       // the text that was tokenized
  std::int64_t rows = 0;
  std::int64_t cols = 0;
};

class Processor {
 public:
  Processor(SmolVLMProcessorConfig config, text::Tokenizer tokenizer);

  // (height, width) after the first resize: the longest edge to `longest_edge`, the other edge by the aspect
  // ratio, truncated and rounded up to even (Idefics3's _resize_output_size_rescale_to_max_len), then capped
  // at 4096 per side.
  static std::pair<std::int64_t, std::int64_t> resize_output_size(std::int64_t height, std::int64_t width,
                                                                  std::int64_t longest_edge);
  // (height, width) rounded up to multiples of `tile` keeping the aspect ratio (resize_for_vision_encoder).
  static std::pair<std::int64_t, std::int64_t> vision_encoder_size(std::int64_t height, std::int64_t width,
                                                                   std::int64_t tile);

  // Resizes and splits uint8 RGB pixels [height, width, 3] on their device.
  Tiles tile(const at::Tensor& pixels) const;

  // Tiles [n, H, W, 3] uint8 -> model input [n, 3, H, W]: rescaled and normalized.
  at::Tensor normalize(const at::Tensor& tiles, c10::Device device, at::ScalarType dtype) const;

  // The prompt text of one image (Idefics3's get_image_prompt_string), image_seq_len <image> tokens per tile.
  static std::string image_prompt(std::int64_t rows, std::int64_t cols, std::int64_t image_seq_len);
  // The chat template rendered for one user turn (an image, then `question`) and the generation prompt,
  // with the image's tokens expanded.
  std::string prompt(std::int64_t rows, std::int64_t cols, std::string_view question) const;

  ProcessorOutput operator()(const io::RgbImage& image, std::string_view question, c10::Device device,
                             at::ScalarType dtype) const;

  const SmolVLMProcessorConfig& config() const noexcept { return config_; }
  const text::Tokenizer& tokenizer() const noexcept { return tokenizer_; }

 private:
  SmolVLMProcessorConfig config_;
  text::Tokenizer tokenizer_;
};

// The service's clean-up of the decoded text (prompt and answer, special tokens skipped): the part after the
// question, before "### Analysis and Description:", after "Assistant: ", each step only where the marker
// occurs, stripped of white space as Python's str.strip() strips it.
std::string clean_caption(std::string_view decoded, std::string_view question = kServiceQuestion);

}  // namespace imagetotext::smolvlm
