// File reading and pixel decoding. OpenCV's imgcodecs decodes JPEG, PNG, BMP, WebP and TIFF; giflib
// decodes GIF (OpenCV 4.6 has no GIF reader). Built without codecs (IMAGETOTEXT_WITH_IMAGE_CODECS=OFF,
// as on a GPU machine without OpenCV) the checks still run and decoding itself reports what is missing.
#include <ATen/ATen.h>
#include <fmt/format.h>

#include <cstring>
#include <fstream>
#include <iterator>
#include <limits>
#include <memory>
#include <vector>

#include "image_internal.hpp"
#include "imagetotext/core/error.hpp"
#include "imagetotext/io/image.hpp"

#if IMAGETOTEXT_WITH_IMAGE_CODECS
#include <gif_lib.h>

#include <opencv2/core.hpp>
#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>
#endif

namespace imagetotext::io {
namespace {

namespace fs = std::filesystem;
using Bytes = std::span<const std::uint8_t>;

at::Tensor new_rgb(std::int64_t height, std::int64_t width) {
  return at::empty({height, width, 3}, at::TensorOptions().dtype(at::kByte));
}

#if IMAGETOTEXT_WITH_IMAGE_CODECS

// ---- GIF: the first frame, drawn on the logical screen as Pillow draws frame 0 ----

struct GifSource {
  Bytes bytes;
  std::size_t offset = 0;
};

int read_gif_bytes(GifFileType* gif, GifByteType* out, int wanted) {
  auto* source = static_cast<GifSource*>(gif->UserData);
  const std::size_t available = source->bytes.size() - source->offset;
  const std::size_t count = std::min<std::size_t>(available, static_cast<std::size_t>(wanted));
  std::memcpy(out, source->bytes.data() + source->offset, count);
  source->offset += count;
  return static_cast<int>(count);
}

at::Tensor decode_gif(Bytes bytes, const fs::path& source) {
  GifSource reader{bytes};
  int error = 0;
  std::unique_ptr<GifFileType, void (*)(GifFileType*)> gif(DGifOpen(&reader, read_gif_bytes, &error),
                                                            [](GifFileType* g) {
                                                              int ignored = 0;
                                                              DGifCloseFile(g, &ignored);
                                                            });
  if (!gif) throw ImageError(source, fmt::format("corrupt GIF header ({})", GifErrorString(error)));
  auto fail = [&](const char* what) {
    return ImageError(source, fmt::format("corrupt GIF: {} ({})", what, GifErrorString(gif->Error)));
  };

  int transparent_index = -1;
  for (;;) {
    GifRecordType record;
    if (DGifGetRecordType(gif.get(), &record) == GIF_ERROR) throw fail("unreadable record (truncated file?)");
    if (record == TERMINATE_RECORD_TYPE) throw ImageError(source, "the GIF holds no image frame");
    if (record == EXTENSION_RECORD_TYPE) {
      int code = 0;
      GifByteType* block = nullptr;
      if (DGifGetExtension(gif.get(), &code, &block) == GIF_ERROR) throw fail("unreadable extension");
      // Graphics control block: [size=4, flags, delay lo, delay hi, transparent index].
      if (code == GRAPHICS_EXT_FUNC_CODE && block != nullptr && block[0] >= 4 && (block[1] & 0x01)) {
        transparent_index = block[4];
      }
      while (block != nullptr) {
        if (DGifGetExtensionNext(gif.get(), &block) == GIF_ERROR) throw fail("unreadable extension");
      }
      continue;
    }
    if (record != IMAGE_DESC_RECORD_TYPE) continue;

    if (DGifGetImageDesc(gif.get()) == GIF_ERROR) throw fail("unreadable frame descriptor");
    const GifImageDesc& frame = gif->Image;
    const ColorMapObject* palette = frame.ColorMap != nullptr ? frame.ColorMap : gif->SColorMap;
    if (palette == nullptr) throw ImageError(source, "the GIF frame has no colour table");

    const std::int64_t width = gif->SWidth, height = gif->SHeight;
    // Pillow fills frame 0's canvas with the transparent index when there is one, else index 0.
    std::vector<GifPixelType> canvas(static_cast<std::size_t>(width * height),
                                     static_cast<GifPixelType>(transparent_index >= 0 ? transparent_index : 0));
    std::vector<GifPixelType> line(static_cast<std::size_t>(frame.Width));
    // Interlaced frames store rows in four passes: every 8th from 0, every 8th from 4, every 4th from 2,
    // every 2nd from 1.
    const int pass_start[4] = {0, 4, 2, 1}, pass_step[4] = {8, 8, 4, 2};
    const int passes = frame.Interlace ? 4 : 1;
    for (int pass = 0; pass < passes; ++pass) {
      const int start = frame.Interlace ? pass_start[pass] : 0, step = frame.Interlace ? pass_step[pass] : 1;
      for (int row = start; row < frame.Height; row += step) {
        if (DGifGetLine(gif.get(), line.data(), frame.Width) == GIF_ERROR) throw fail("pixel data cut short");
        const std::int64_t y = frame.Top + row;
        if (y < 0 || y >= height) continue;
        for (int col = 0; col < frame.Width; ++col) {
          const std::int64_t x = frame.Left + col;
          if (x >= 0 && x < width) canvas[static_cast<std::size_t>(y * width + x)] = line[col];
        }
      }
    }

    at::Tensor pixels = new_rgb(height, width);
    auto* out = pixels.data_ptr<std::uint8_t>();
    for (std::size_t i = 0; i < canvas.size(); ++i, out += 3) {
      const int index = canvas[i];
      if (index == transparent_index) {
        out[0] = out[1] = out[2] = 255;  // fully transparent on white
      } else if (index < palette->ColorCount) {
        out[0] = palette->Colors[index].Red;
        out[1] = palette->Colors[index].Green;
        out[2] = palette->Colors[index].Blue;
      } else {
        out[0] = out[1] = out[2] = 0;  // an index past the palette reads as black, as in Pillow
      }
    }
    return pixels;  // later frames are never read
  }
}

// ---- Everything else through OpenCV ----

// 16-bit samples keep their high byte, as Pillow's 16-bit RGB raw modes do.
cv::Mat to_8bit(const cv::Mat& image, const fs::path& source) {
  if (image.depth() == CV_8U) return image;
  if (image.depth() != CV_16U) {
    throw ImageError(source, "unsupported sample format (only 8- and 16-bit integer samples are read)");
  }
  cv::Mat out(image.rows, image.cols, CV_MAKETYPE(CV_8U, image.channels()));
  for (int y = 0; y < image.rows; ++y) {
    const auto* in = image.ptr<std::uint16_t>(y);
    auto* o = out.ptr<std::uint8_t>(y);
    for (int i = 0; i < image.cols * image.channels(); ++i) o[i] = static_cast<std::uint8_t>(in[i] >> 8);
  }
  return out;
}

at::Tensor decode_with_opencv(Bytes bytes, ImageFormat format, const fs::path& source) {
  // JPEG has no alpha and Pillow ignores a BMP's fourth channel, so both are read as colour directly.
  const bool colour_only = format == ImageFormat::jpeg || format == ImageFormat::bmp;
  const int flags = (colour_only ? cv::IMREAD_COLOR : cv::IMREAD_UNCHANGED) | cv::IMREAD_IGNORE_ORIENTATION;
  cv::Mat decoded;
  try {
    if (bytes.size() > static_cast<std::size_t>(std::numeric_limits<int>::max())) {
      throw ImageError(source, "the file is over 2 GiB, larger than the decoder can take");
    }
    const cv::Mat encoded(1, static_cast<int>(bytes.size()), CV_8UC1, const_cast<std::uint8_t*>(bytes.data()));
    decoded = cv::imdecode(encoded, flags);
  } catch (const cv::Exception& e) {
    throw ImageError(source, fmt::format("corrupt {} data ({})", format_name(format), e.err));
  }
  if (decoded.empty()) {
    throw ImageError(source, fmt::format("corrupt {} data: the decoder could not read it", format_name(format)));
  }
  const cv::Mat image = to_8bit(decoded, source);

  at::Tensor pixels = new_rgb(image.rows, image.cols);
  cv::Mat rgb(image.rows, image.cols, CV_8UC3, pixels.data_ptr());  // decode straight into the tensor
  switch (image.channels()) {
    case 1: cv::cvtColor(image, rgb, cv::COLOR_GRAY2RGB); break;
    case 3: cv::cvtColor(image, rgb, cv::COLOR_BGR2RGB); break;
    case 4: {
      // libtiff hands OpenCV premultiplied colour (it converts unassociated alpha), which is already the
      // colour over black: over white it only needs the white share added.
      const bool premultiplied = format == ImageFormat::tiff;
      for (int y = 0; y < image.rows; ++y) {
        const auto* bgra = image.ptr<std::uint8_t>(y);
        auto* out = rgb.ptr<std::uint8_t>(y);
        for (int x = 0; x < image.cols; ++x, bgra += 4, out += 3) {
          for (int c = 0; c < 3; ++c) {
            out[c] = premultiplied ? static_cast<std::uint8_t>(std::min(255, bgra[2 - c] + 255 - bgra[3]))
                                   : detail::over_white(bgra[2 - c], bgra[3]);
          }
        }
      }
      break;
    }
    default:
      throw ImageError(source, fmt::format("unsupported channel count {}", image.channels()));
  }
  return pixels;
}

#endif  // IMAGETOTEXT_WITH_IMAGE_CODECS

}  // namespace

bool file_decoding_available() noexcept { return IMAGETOTEXT_WITH_IMAGE_CODECS != 0; }

RgbImage decode_rgb_image(Bytes bytes, const fs::path& source, const ImageLoadOptions& options) {
  const ImageInfo info = probe_image(bytes, source);
  if (info.width * info.height > options.max_pixels) {
    throw ImageError(source, fmt::format("{}x{} is {} pixels, over the limit of {} (Pillow's MAX_IMAGE_PIXELS); "
                                         "raise ImageLoadOptions::max_pixels to read it",
                                         info.width, info.height, info.width * info.height, options.max_pixels));
  }
  if (const std::string reason = detail::truncation_reason(info.format, bytes); !reason.empty()) {
    throw ImageError(source, reason);
  }
#if IMAGETOTEXT_WITH_IMAGE_CODECS
  at::Tensor pixels = info.format == ImageFormat::gif ? decode_gif(bytes, source)
                                                      : decode_with_opencv(bytes, info.format, source);
  return RgbImage{std::move(pixels), source.stem().string()};
#else
  throw ImageError(source, "this build of imagetotext has no image decoders (IMAGETOTEXT_WITH_IMAGE_CODECS=OFF); "
                           "pass decoded pixels instead");
#endif
}

RgbImage load_rgb_image(const fs::path& path, const ImageLoadOptions& options) {
  std::error_code ec;
  const fs::file_status status = fs::status(path, ec);
  if (!fs::exists(status)) throw FileNotFoundError(path, "image file not found");
  if (fs::is_directory(status)) throw ImageError(path, "it is a directory, not an image file");
  std::ifstream in(path, std::ios::binary);
  if (!in) throw ImageError(path, "the file cannot be opened for reading");
  const std::vector<std::uint8_t> bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (in.bad()) throw ImageError(path, "reading the file failed");
  return decode_rgb_image(bytes, path, options);
}

RgbImage rgb_image_from_pixels(const at::Tensor& pixels, std::string name) {
  if (!pixels.defined() || pixels.scalar_type() != at::kByte || pixels.dim() != 3 || pixels.size(2) != 3 ||
      pixels.size(0) == 0 || pixels.size(1) == 0) {
    throw InvalidArgumentError(fmt::format(
        "image '{}': pixels must be a non-empty uint8 tensor of shape [height, width, 3], got {} of shape {}", name,
        pixels.defined() ? std::string(c10::toString(pixels.scalar_type())) : "an undefined tensor",
        pixels.defined() ? c10::str(pixels.sizes()) : "[]"));
  }
  return RgbImage{pixels.to(at::kCPU).contiguous(), std::move(name)};
}

}  // namespace imagetotext::io
