// Format sniffing and header-only size reading, so a file's format and pixel count are known (and a
// decompression bomb refused) before any decoder allocates memory. Needs no image library.
#include <fmt/format.h>

#include <algorithm>
#include <array>
#include <cstring>
#include <optional>

#include "image_internal.hpp"
#include "imagetotext/core/error.hpp"
#include "imagetotext/io/image.hpp"

namespace imagetotext::io {
namespace {

using Bytes = std::span<const std::uint8_t>;

std::uint32_t be16(Bytes b, std::size_t at) { return (std::uint32_t{b[at]} << 8) | b[at + 1]; }
std::uint32_t be32(Bytes b, std::size_t at) { return (be16(b, at) << 16) | be16(b, at + 2); }
std::uint32_t le16(Bytes b, std::size_t at) { return std::uint32_t{b[at]} | (std::uint32_t{b[at + 1]} << 8); }
std::uint32_t le24(Bytes b, std::size_t at) { return le16(b, at) | (std::uint32_t{b[at + 2]} << 16); }
std::uint32_t le32(Bytes b, std::size_t at) { return le16(b, at) | (le16(b, at + 2) << 16); }

bool starts_with(Bytes b, std::string_view magic, std::size_t at = 0) {
  return b.size() >= at + magic.size() && std::memcmp(b.data() + at, magic.data(), magic.size()) == 0;
}

std::optional<ImageFormat> sniff(Bytes b) {
  if (starts_with(b, "\xFF\xD8\xFF")) return ImageFormat::jpeg;
  if (starts_with(b, "\x89PNG\r\n\x1A\n")) return ImageFormat::png;
  if (starts_with(b, "GIF87a") || starts_with(b, "GIF89a")) return ImageFormat::gif;
  if (starts_with(b, "BM")) return ImageFormat::bmp;
  if (starts_with(b, "RIFF") && starts_with(b, "WEBP", 8)) return ImageFormat::webp;
  if (starts_with(b, std::string_view("II*\0", 4)) || starts_with(b, std::string_view("MM\0*", 4)))
    return ImageFormat::tiff;
  return std::nullopt;
}

// Each reader returns {width, height} or nullopt when the header is cut short or malformed.
using Size = std::optional<std::array<std::int64_t, 2>>;

Size png_size(Bytes b) {
  if (b.size() < 24 || !starts_with(b, "IHDR", 12)) return std::nullopt;
  return std::array<std::int64_t, 2>{be32(b, 16), be32(b, 20)};
}

Size gif_size(Bytes b) {
  if (b.size() < 10) return std::nullopt;
  return std::array<std::int64_t, 2>{le16(b, 6), le16(b, 8)};
}

Size bmp_size(Bytes b) {
  if (b.size() < 26) return std::nullopt;
  const std::uint32_t header_size = le32(b, 14);
  if (header_size == 12) return std::array<std::int64_t, 2>{le16(b, 18), le16(b, 20)};  // OS/2 core header
  const auto width = static_cast<std::int32_t>(le32(b, 18));
  const auto height = static_cast<std::int32_t>(le32(b, 22));  // negative: rows stored top-down
  return std::array<std::int64_t, 2>{width, height < 0 ? -static_cast<std::int64_t>(height) : height};
}

Size webp_size(Bytes b) {
  if (b.size() < 30) return std::nullopt;
  if (starts_with(b, "VP8 ", 12)) {  // lossy: 14-bit sizes after the key-frame start code
    return std::array<std::int64_t, 2>{le16(b, 26) & 0x3FFF, le16(b, 28) & 0x3FFF};
  }
  if (starts_with(b, "VP8L", 12)) {  // lossless: two 14-bit (size - 1) fields after the 0x2F signature
    const std::uint32_t bits = le32(b, 21);
    return std::array<std::int64_t, 2>{(bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1};
  }
  if (starts_with(b, "VP8X", 12)) {  // extended: 24-bit (canvas size - 1) fields
    return std::array<std::int64_t, 2>{std::int64_t{le24(b, 24)} + 1, std::int64_t{le24(b, 27)} + 1};
  }
  return std::nullopt;
}

Size jpeg_size(Bytes b) {
  std::size_t at = 2;
  while (at + 4 <= b.size()) {
    if (b[at] != 0xFF) return std::nullopt;
    const std::uint8_t marker = b[at + 1];
    if (marker == 0xFF) {  // fill byte
      ++at;
      continue;
    }
    if (marker == 0xD8 || (marker >= 0xD0 && marker <= 0xD7) || marker == 0x01) {  // no length field
      at += 2;
      continue;
    }
    const std::uint32_t length = be16(b, at + 2);
    if (length < 2) return std::nullopt;
    const bool start_of_frame = marker >= 0xC0 && marker <= 0xCF && marker != 0xC4 && marker != 0xC8 && marker != 0xCC;
    if (start_of_frame) {
      if (at + 9 > b.size()) return std::nullopt;
      return std::array<std::int64_t, 2>{be16(b, at + 7), be16(b, at + 5)};
    }
    if (marker == 0xDA || marker == 0xD9) return std::nullopt;  // scan or end before any frame header
    at += 2 + length;
  }
  return std::nullopt;
}

Size tiff_size(Bytes b) {
  if (b.size() < 8) return std::nullopt;
  const bool little = b[0] == 'I';
  auto u16 = [&](std::size_t at) { return little ? le16(b, at) : be16(b, at); };
  auto u32 = [&](std::size_t at) { return little ? le32(b, at) : be32(b, at); };
  const std::size_t ifd = u32(4);
  if (ifd + 2 > b.size()) return std::nullopt;
  const std::size_t entries = u16(ifd);
  std::int64_t width = -1, height = -1;
  for (std::size_t i = 0; i < entries; ++i) {
    const std::size_t entry = ifd + 2 + 12 * i;
    if (entry + 12 > b.size()) return std::nullopt;
    const std::uint32_t tag = u16(entry), type = u16(entry + 2);
    const std::int64_t value = type == 3 ? u16(entry + 8) : type == 4 ? u32(entry + 8) : -1;
    if (tag == 256) width = value;
    if (tag == 257) height = value;
  }
  if (width < 0 || height < 0) return std::nullopt;
  return std::array<std::int64_t, 2>{width, height};
}

}  // namespace

std::string_view format_name(ImageFormat format) noexcept {
  switch (format) {
    case ImageFormat::jpeg: return "JPEG";
    case ImageFormat::png: return "PNG";
    case ImageFormat::gif: return "GIF";
    case ImageFormat::bmp: return "BMP";
    case ImageFormat::webp: return "WebP";
    case ImageFormat::tiff: return "TIFF";
  }
  return "unknown";
}

ImageInfo probe_image(Bytes bytes, const std::filesystem::path& source) {
  if (bytes.empty()) throw ImageError(source, "the file is empty");
  const auto format = sniff(bytes);
  if (!format) {
    throw ImageError(source, "not a supported image format (JPEG, PNG, GIF, BMP, WebP or TIFF expected)");
  }
  Size size;
  switch (*format) {
    case ImageFormat::jpeg: size = jpeg_size(bytes); break;
    case ImageFormat::png: size = png_size(bytes); break;
    case ImageFormat::gif: size = gif_size(bytes); break;
    case ImageFormat::bmp: size = bmp_size(bytes); break;
    case ImageFormat::webp: size = webp_size(bytes); break;
    case ImageFormat::tiff: size = tiff_size(bytes); break;
  }
  if (!size) throw ImageError(source, fmt::format("truncated or corrupt {} header", format_name(*format)));
  const auto [width, height] = *size;
  if (width <= 0 || height <= 0) {
    throw ImageError(source, fmt::format("{} header gives an empty size {}x{}", format_name(*format), width, height));
  }
  return ImageInfo{*format, width, height};
}

namespace detail {

std::string truncation_reason(ImageFormat format, Bytes b) {
  switch (format) {
    case ImageFormat::png: {
      // Walk the chunks: every length must stay inside the file, and IEND must be reached.
      std::size_t at = 8;
      while (at + 12 <= b.size()) {
        const std::size_t length = be32(b, at);
        if (starts_with(b, "IEND", at + 4)) return {};
        if (length > b.size() - at - 12) break;
        at += 12 + length;
      }
      return "the PNG data stops before its IEND chunk (truncated file)";
    }
    case ImageFormat::jpeg: {
      // Entropy-coded data cannot hold FF D9 (FF is always stuffed), so an end-of-image marker after the
      // first scan header means the stream is whole; trailing bytes after it are fine, as in Pillow.
      const std::array<std::uint8_t, 2> sos{0xFF, 0xDA};
      const auto scan = std::search(b.begin(), b.end(), sos.begin(), sos.end());
      for (auto it = b.end(); scan != b.end() && it - scan > 2; --it) {
        if (*(it - 2) == 0xFF && *(it - 1) == 0xD9) return {};
      }
      return "the JPEG data stops before its end-of-image marker (truncated file)";
    }
    case ImageFormat::webp: {
      const std::size_t riff_size = le32(b, 4);
      if (riff_size + 8 > b.size()) return "the WebP data is shorter than its RIFF header says (truncated file)";
      return {};
    }
    case ImageFormat::bmp: {
      if (b.size() < 14) return "truncated BMP header";
      const std::size_t pixel_offset = le32(b, 10);
      if (pixel_offset >= b.size()) return "the BMP pixel data is missing (truncated file)";
      return {};
    }
    case ImageFormat::gif:   // giflib reports a cut inside the first frame itself
    case ImageFormat::tiff:  // libtiff checks every strip against the file
      return {};
  }
  return {};
}

}  // namespace detail
}  // namespace imagetotext::io
