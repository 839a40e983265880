"""imagetotext.load_rgb_image against the service's own load_rgb_image (Pillow), the oracle.

Every image is made here with Pillow; every expected pixel comes from the service's function below.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import imagetotext
from conftest import needs_codecs

def service_load_rgb_image(image_path):
    """meme-search image_to_text_generator/app/model_init.py, load_rgb_image (v2.3.0), verbatim logic."""
    image = Image.open(image_path)
    image.seek(0)
    mode = getattr(image, "mode", None)
    image_info = getattr(image, "info", {})
    has_transparency = isinstance(image_info, dict) and image_info.get("transparency") is not None
    has_alpha = mode in ("RGBA", "LA") or has_transparency
    if has_alpha:
        image_rgba = image.convert("RGBA")
        background = Image.new("RGBA", image_rgba.size, (255, 255, 255, 255))
        background.alpha_composite(image_rgba)
        return background.convert("RGB")
    if isinstance(mode, str) and mode != "RGB":
        return image.convert("RGB")
    return image


def oracle(path: Path) -> np.ndarray:
    return np.asarray(service_load_rgb_image(path).convert("RGB"))


def ours(path: Path) -> np.ndarray:
    pixels = imagetotext.load_rgb_image(path)
    assert pixels.dtype.is_floating_point is False and pixels.shape[-1] == 3
    return pixels.numpy()


RNG = np.random.default_rng(1234)


def random_rgb(height=41, width=67):
    return RNG.integers(0, 256, size=(height, width, 3), dtype=np.uint8)


def smooth_rgb(height=96, width=128):
    # Smooth content keeps lossy codecs away from the clipping corner cases that differ between decoders.
    y, x = np.mgrid[0:height, 0:width]
    return np.stack([x * 255 // width, y * 255 // height, (x + y) * 255 // (width + height)], -1).astype(np.uint8)


def alpha_ramp():
    """Every (value, alpha) pair once: rows are alpha, columns are value, three channels differ."""
    a, v = np.mgrid[0:256, 0:256]
    return np.stack([v, 255 - v, (v * 7) % 256, a], -1).astype(np.uint8)


def save(tmp_path: Path, name: str, image: Image.Image, **params) -> Path:
    path = tmp_path / name
    image.save(path, **params)
    return path


# ---- exact formats: every pixel identical to the oracle ----

EXACT_CASES = {
    "rgb.png": lambda: Image.fromarray(random_rgb()),
    "rgba.png": lambda: Image.fromarray(alpha_ramp(), "RGBA"),
    "la.png": lambda: Image.fromarray(alpha_ramp()[..., [0, 3]], "LA"),
    "gray.png": lambda: Image.fromarray(random_rgb()[..., 0], "L"),
    "palette.png": lambda: Image.fromarray(random_rgb()).quantize(colors=50),
    "rgb.bmp": lambda: Image.fromarray(random_rgb()),
    "gray.bmp": lambda: Image.fromarray(random_rgb()[..., 0], "L"),
    "rgb.tiff": lambda: Image.fromarray(random_rgb()),
    "rgba.tiff": lambda: Image.fromarray(alpha_ramp(), "RGBA"),
    "rgb_lossless.webp": lambda: Image.fromarray(random_rgb()),
    "rgba_lossless.webp": lambda: Image.fromarray(alpha_ramp(), "RGBA"),
}


@needs_codecs
@pytest.mark.parametrize("name", sorted(EXACT_CASES))
def test_lossless_formats_match_the_service_exactly(tmp_path, name):
    params = {"lossless": True} if name.endswith(".webp") else {}
    path = save(tmp_path, name, EXACT_CASES[name](), **params)
    expected = oracle(path)
    got = ours(path)
    assert got.shape == expected.shape
    np.testing.assert_array_equal(got, expected)


@needs_codecs
def test_palette_with_transparency_is_flattened_on_white(tmp_path):
    image = Image.fromarray(random_rgb()).quantize(colors=16)
    alphas = bytes(RNG.integers(0, 256, size=16, dtype=np.uint8))
    path = save(tmp_path, "palette_trns.png", image, transparency=alphas)
    assert Image.open(path).info.get("transparency") is not None  # the oracle takes its alpha branch
    np.testing.assert_array_equal(ours(path), oracle(path))


@needs_codecs
def test_rgb_png_with_a_transparent_colour_key(tmp_path):
    pixels = random_rgb()
    pixels[:10, :10] = (12, 34, 56)
    path = save(tmp_path, "rgb_key.png", Image.fromarray(pixels), transparency=(12, 34, 56))
    expected = oracle(path)
    assert (expected[:10, :10] == 255).all()
    np.testing.assert_array_equal(ours(path), expected)


@needs_codecs
def test_rgba_red_half_transparent_is_the_services_pink(tmp_path):
    # The service's own unit test: RGBA(255, 0, 0, 128) on white becomes (255, 127, 127).
    path = save(tmp_path, "red.png", Image.new("RGBA", (3, 2), (255, 0, 0, 128)))
    assert ours(path)[0, 0].tolist() == oracle(path)[0, 0].tolist() == [255, 127, 127]


# ---- GIF through giflib: first frame only, transparency on white ----


@needs_codecs
def test_gif_first_frame_of_an_animation(tmp_path):
    frames = [Image.fromarray(random_rgb()).quantize(colors=64) for _ in range(3)]
    path = tmp_path / "anim.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=100, loop=0)
    assert Image.open(path).n_frames == 3
    np.testing.assert_array_equal(ours(path), oracle(path))


@needs_codecs
def test_gif_with_transparency_and_interlace(tmp_path):
    image = Image.fromarray(random_rgb(64, 80)).quantize(colors=32)
    path = save(tmp_path, "trns.gif", image, transparency=3, interlace=True)
    assert Image.open(path).info.get("transparency") == 3
    expected = oracle(path)
    np.testing.assert_array_equal(ours(path), expected)


@needs_codecs
def test_gif_truncated_after_its_first_frame_still_reads(tmp_path):
    frames = [Image.fromarray(random_rgb()).quantize(colors=64) for _ in range(2)]
    whole = tmp_path / "two.gif"
    frames[0].save(whole, save_all=True, append_images=frames[1:], duration=100)
    data = whole.read_bytes()
    first_frame_end = len(data) * 2 // 3  # well inside the second frame
    cut = tmp_path / "two_cut.gif"
    cut.write_bytes(data[:first_frame_end])
    np.testing.assert_array_equal(ours(cut), oracle(whole))


# ---- lossy formats: decoders of one family, compared within one level ----


@needs_codecs
@pytest.mark.parametrize(
    "name,params",
    [
        ("q90_420.jpg", {"quality": 90}),
        ("q95_444.jpg", {"quality": 95, "subsampling": 0}),
        ("progressive.jpg", {"quality": 85, "progressive": True}),
        ("gray.jpg", {"quality": 90}),
        ("lossy.webp", {"quality": 80}),
    ],
)
def test_lossy_formats_match_within_one_level(tmp_path, name, params):
    pixels = smooth_rgb()
    image = Image.fromarray(pixels[..., 0], "L") if name.startswith("gray") else Image.fromarray(pixels)
    path = save(tmp_path, name, image, **params)
    expected = oracle(path).astype(int)
    got = ours(path).astype(int)
    assert got.shape == expected.shape
    # Pillow bundles its own libjpeg-turbo / libwebp; ours are Debian's. Same algorithms, so at most an
    # occasional one-level difference in rounding.
    assert np.abs(got - expected).max() <= 1


@needs_codecs
def test_exif_orientation_is_not_applied(tmp_path):
    # Pillow's Image.open does not rotate by EXIF, so the service does not; OpenCV would by default.
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    path = save(tmp_path, "rotated.jpg", Image.fromarray(smooth_rgb(48, 96)), quality=95, exif=exif.tobytes())
    assert oracle(path).shape == (48, 96, 3)
    assert ours(path).shape == (48, 96, 3)


# ---- bad inputs: one clear error each, naming the path ----


def test_missing_file(tmp_path):
    path = tmp_path / "missing.png"
    with pytest.raises(FileNotFoundError) as caught:
        imagetotext.load_rgb_image(path)
    assert caught.value.filename == str(path)
    assert isinstance(caught.value, imagetotext.ImageNotFoundError)


def test_directory(tmp_path):
    with pytest.raises(ValueError, match="directory"):
        imagetotext.load_rgb_image(tmp_path)


def test_empty_file(tmp_path):
    path = tmp_path / "zero.jpg"
    path.write_bytes(b"")
    with pytest.raises(imagetotext.ImageError, match="empty") as caught:
        imagetotext.load_rgb_image(path)
    assert str(path) in str(caught.value)


def test_not_an_image(tmp_path):
    path = tmp_path / "notes.jpg"
    path.write_text("this is text, not a JPEG\n")
    with pytest.raises(imagetotext.ImageError, match="not a supported image format"):
        imagetotext.load_rgb_image(path)


@needs_codecs
@pytest.mark.parametrize("ext", ["png", "jpg", "gif", "webp", "bmp", "tiff"])
def test_truncated_files(tmp_path, ext):
    params = {"lossless": True} if ext == "webp" else {}
    image = Image.fromarray(random_rgb(64, 64))
    if ext == "gif":
        image = image.quantize(colors=64)
    whole = save(tmp_path, f"whole.{ext}", image, **params)
    cut = tmp_path / f"cut.{ext}"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    # Pillow refuses these too (the oracle agrees that they are broken).
    with pytest.raises(OSError):
        oracle(cut)
    with pytest.raises(imagetotext.ImageError) as caught:
        imagetotext.load_rgb_image(cut)
    assert str(cut) in str(caught.value)


@needs_codecs
def test_pixel_limit_is_pillows(tmp_path):
    assert imagetotext.max_image_pixels == Image.MAX_IMAGE_PIXELS
    path = save(tmp_path, "wide.png", Image.new("RGB", (300, 200)))
    with pytest.raises(imagetotext.ImageError, match="60000 pixels"):
        imagetotext.load_rgb_image(path, max_pixels=59_999)
    assert imagetotext.load_rgb_image(path, max_pixels=60_000).shape == (200, 300, 3)


def test_decompression_bomb_is_refused_from_the_header(tmp_path):
    # A real PNG of 10000 x 10000 (100 M pixels, over Pillow's limit) compresses to a few hundred kB.
    path = save(tmp_path, "bomb.png", Image.new("L", (10_000, 10_000)))
    assert imagetotext.probe_image(path.read_bytes()) == ("PNG", 10_000, 10_000)
    with pytest.raises(imagetotext.ImageError, match="over the limit"):
        imagetotext.load_rgb_image(path)


@pytest.mark.parametrize("ext", ["png", "jpg", "gif", "webp", "bmp", "tiff"])
def test_probe_reads_the_size_pillow_reads(ext):
    image = Image.fromarray(random_rgb(23, 57))
    if ext == "gif":
        image = image.quantize()
    buffer = io.BytesIO()
    image.save(buffer, format={"jpg": "JPEG", "tiff": "TIFF"}.get(ext, ext.upper()))
    fmt, width, height = imagetotext.probe_image(buffer.getvalue())
    assert (width, height) == Image.open(io.BytesIO(buffer.getvalue())).size
