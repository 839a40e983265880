// Pieces shared by the header probe and the decoders; not part of the public API.
#pragma once

#include <cstdint>
#include <filesystem>
#include <span>
#include <string>

#include "imagetotext/io/image.hpp"

namespace imagetotext::io::detail {

// Why the encoded stream stops before its end marker, or an empty string if it looks whole. libjpeg only
// warns on a truncated JPEG (and fills the rest with grey), so truncation is checked structurally here,
// where Pillow would raise "image file is truncated".
std::string truncation_reason(ImageFormat format, std::span<const std::uint8_t> bytes);

// Composites one RGBA pixel onto opaque white exactly as Pillow's ImagingAlphaComposite does for an
// opaque destination (7 bits of extra precision, rounded divisions by 255).
inline std::uint8_t over_white(std::uint8_t value, std::uint8_t alpha) noexcept {
  if (alpha == 0) return 255;
  constexpr std::uint32_t kPrecisionBits = 7;
  // With an opaque white destination Pillow's coefficients reduce exactly to alpha << 7 and
  // (255 - alpha) << 7.
  const std::uint32_t coef1 = static_cast<std::uint32_t>(alpha) << kPrecisionBits;
  const std::uint32_t coef2 = (255u << kPrecisionBits) - coef1;
  const std::uint32_t mixed = value * coef1 + 255u * coef2 + (0x80u << kPrecisionBits);
  return static_cast<std::uint8_t>(((((mixed >> 8) + mixed) >> 8)) >> kPrecisionBits);
}

}  // namespace imagetotext::io::detail
