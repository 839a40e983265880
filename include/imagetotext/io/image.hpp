// Images in, RGB pixels out: the io layer every model's processor starts from.
//
// Decoding follows the service's `load_rgb_image` (Pillow): the first frame of an animation, images with
// an alpha channel or a transparency key composited onto opaque white with Pillow's integer
// `alpha_composite` arithmetic, every other mode converted to RGB, and EXIF orientation NOT applied.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <filesystem>
#include <span>
#include <string>
#include <string_view>

namespace imagetotext::io {

// Pillow's Image.MAX_IMAGE_PIXELS: int(1024 * 1024 * 1024 // 4 // 3). Larger images are refused before
// any pixel is decoded, so a decompression bomb costs nothing.
inline constexpr std::int64_t kDefaultMaxImagePixels = 89'478'485;

enum class ImageFormat { jpeg, png, gif, bmp, webp, tiff };

std::string_view format_name(ImageFormat format) noexcept;

// What the header says, read without decoding any pixel.
struct ImageInfo {
  ImageFormat format;
  std::int64_t width;
  std::int64_t height;
};

struct ImageLoadOptions {
  std::int64_t max_pixels = kDefaultMaxImagePixels;  // width * height above this is an ImageError
};

// A decoded image. `pixels` is uint8, [height, width, 3], contiguous, on the CPU.
struct RgbImage {
  at::Tensor pixels;
  std::string name;  // the file's stem, or the name the caller gave

  std::int64_t height() const { return pixels.size(0); }
  std::int64_t width() const { return pixels.size(1); }
};

// Reads the format and the size from the header. Throws ImageError (naming `source`) for an empty,
// unknown, truncated-in-the-header or nonsensical file.
ImageInfo probe_image(std::span<const std::uint8_t> bytes, const std::filesystem::path& source);

// Reads and decodes a file. Throws FileNotFoundError if it does not exist, ImageError for a directory,
// an empty, truncated, corrupt or non-image file, or one over `options.max_pixels`.
RgbImage load_rgb_image(const std::filesystem::path& path, const ImageLoadOptions& options = {});

// Decodes an encoded image held in memory; `source` names it in errors and gives the image its name.
RgbImage decode_rgb_image(std::span<const std::uint8_t> bytes, const std::filesystem::path& source,
                          const ImageLoadOptions& options = {});

// Wraps pixels the caller decoded: uint8 [height, width, 3] on any device (copied to contiguous CPU
// memory). Throws InvalidArgumentError for another dtype or shape.
RgbImage rgb_image_from_pixels(const at::Tensor& pixels, std::string name);

// False when the library was built with IMAGETOTEXT_WITH_IMAGE_CODECS=OFF: then only pixels can be passed in,
// and load_rgb_image / decode_rgb_image throw ImageError saying so.
bool file_decoding_available() noexcept;

}  // namespace imagetotext::io
