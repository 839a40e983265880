"""torch.ops.imagetotext.resize_pillow against Pillow's Image.resize, bit for bit, on CPU and CUDA."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import imagetotext  # noqa: F401  (registers torch.ops.imagetotext)

R = Image.Resampling
# Pillow modes whose channels Image.resize resamples independently (RGBA/LA are premultiplied first).
MODES = {1: "L", 2: "La", 3: "RGB", 4: "RGBX"}
FILTERS = [R.LANCZOS, R.BICUBIC, R.BILINEAR]
ALL_FILTERS = [R.NEAREST, R.LANCZOS, R.BILINEAR, R.BICUBIC, R.BOX, R.HAMMING]


def pillow_resize(pixels: np.ndarray, height: int, width: int, resample) -> np.ndarray:
    channels = pixels.shape[2]
    mode = MODES[channels]
    image = Image.frombytes(mode, (pixels.shape[1], pixels.shape[0]), np.ascontiguousarray(pixels).tobytes())
    resized = image.resize((width, height), resample, reducing_gap=None)
    return np.frombuffer(resized.tobytes(), dtype=np.uint8).reshape(height, width, channels)


def ours(pixels, height, width, resample, device="cpu") -> np.ndarray:
    tensor = torch.from_numpy(np.ascontiguousarray(pixels)).to(device)
    out = torch.ops.imagetotext.resize_pillow(tensor, height, width, int(resample))
    assert out.dtype == torch.uint8 and out.device.type == torch.device(device).type
    return out.cpu().numpy()


def random_image(height, width, channels, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (height, width, channels), dtype=np.uint8)


def structured_image(height, width, channels):
    """Hard edges, full-range steps and a checkerboard: where negative lobes overshoot and clip8 clamps."""
    y, x = np.mgrid[0:height, 0:width]
    planes = [
        ((x // 3 + y // 3) % 2) * 255,
        np.where(x < width // 2, 0, 255) ^ np.where(y < height // 3, 255, 0),
        (x * 255 // max(width - 1, 1)),
        ((x * 7 + y * 13) % 256),
    ]
    return np.stack(planes[:channels], axis=-1).astype(np.uint8)


def pillow_passes(pixels, height, width, resample, vertical_first: bool) -> np.ndarray:
    """Pillow's own single-axis resizes in the given order: each alone is exact Pillow."""
    h, w = pixels.shape[:2]
    if vertical_first:
        return pillow_resize(pillow_resize(pixels, height, w, resample), height, width, resample)
    return pillow_resize(pillow_resize(pixels, h, width, resample), height, width, resample)


def assert_same(pixels, height, width, resample, device="cpu"):
    """Bit for bit with Pillow, except where both axes shrink: there Pillow 13 picks the order of its two
    passes by a rule we only approximate (src/ops/resize_pillow.hpp), so we must equal Pillow's own passes
    in our order, and Pillow's result must be one of the two orders."""
    expected = pillow_resize(pixels, height, width, resample)
    got = ours(pixels, height, width, resample, device)
    assert got.shape == expected.shape
    h, w = pixels.shape[:2]
    if height < h and width < w and resample != R.NEAREST:
        ours_vertical_first = w * height < width * h
        assert np.array_equal(got, pillow_passes(pixels, height, width, resample, ours_vertical_first)), (
            f"differs from Pillow's passes ({resample.name}, {pixels.shape} -> {height}x{width})"
        )
        assert np.array_equal(expected, got) or np.array_equal(
            expected, pillow_passes(pixels, height, width, resample, not ours_vertical_first)
        )
        return
    mismatches = int((got != expected).sum())
    assert mismatches == 0, f"{mismatches} values differ from Pillow ({resample.name}, {pixels.shape} -> {height}x{width})"


SIZES = [
    ((37, 53), (19, 101)),  # odd sizes, down in height and up in width
    ((64, 48), (128, 96)),  # exact 2x upscale
    ((101, 67), (33, 22)),  # ~3x downscale
    ((40, 30), (40, 77)),  # height unchanged: the vertical pass is skipped
    ((40, 30), (13, 30)),  # width unchanged: the horizontal pass is skipped
    ((1, 1), (7, 7)),  # a single pixel blown up
    ((1, 9), (5, 1)),
    ((3, 2000), (2, 3)),  # extreme horizontal reduction
    ((2000, 2), (3, 5)),  # extreme vertical reduction
    ((5, 7), (311, 2)),  # extreme enlargement
]


@pytest.mark.parametrize("resample", FILTERS, ids=lambda r: r.name)
@pytest.mark.parametrize("channels", [1, 2, 3, 4])
@pytest.mark.parametrize("source,target", SIZES)
def test_random_images_match_pillow(source, target, channels, resample):
    assert_same(random_image(*source, channels, seed=sum(source) + channels), *target, resample)


@pytest.mark.parametrize("resample", ALL_FILTERS, ids=lambda r: r.name)
@pytest.mark.parametrize("source,target", [((45, 70), (128, 33)), ((96, 96), (17, 250)), ((30, 40), (30, 41))])
def test_structured_images_match_pillow(source, target, resample):
    assert_same(structured_image(*source, 3), *target, resample)
    assert_same(structured_image(*source, 1), *target, resample)


@pytest.mark.parametrize("resample", ALL_FILTERS, ids=lambda r: r.name)
def test_nearest_box_hamming_on_random_images(resample):
    for source, target in [((37, 53), (19, 101)), ((7, 300), (11, 13)), ((1, 1), (4, 3))]:
        assert_same(random_image(*source, 3, seed=7), *target, resample)


# The processors' sizes: SmolVLM (longest edge 2048, LANCZOS; tiles' global image 512x512) and
# Florence-2 (768x768, BICUBIC).
@pytest.mark.parametrize(
    "source,target,resample",
    [
        ((480, 640), (1536, 2048), R.LANCZOS),
        ((1536, 2048), (512, 512), R.LANCZOS),
        ((300, 451), (1362, 2048), R.LANCZOS),
        ((480, 640), (768, 768), R.BICUBIC),
        ((1000, 333), (768, 768), R.BICUBIC),
    ],
    ids=lambda v: str(v),
)
def test_processor_sizes_match_pillow(source, target, resample):
    assert_same(random_image(*source, 3, seed=1), *target, resample)


def test_same_size_is_a_copy():
    pixels = random_image(20, 30, 3)
    tensor = torch.from_numpy(pixels)
    out = torch.ops.imagetotext.resize_pillow(tensor, 20, 30, int(R.LANCZOS))
    assert torch.equal(out, tensor) and out.data_ptr() != tensor.data_ptr()


def test_batch_and_non_contiguous_input():
    images = np.stack([random_image(33, 47, 3, seed=s) for s in range(3)])
    batch = torch.from_numpy(images)
    out = torch.ops.imagetotext.resize_pillow(batch, 20, 64, int(R.BICUBIC))
    assert out.shape == (3, 20, 64, 3)
    for i in range(3):
        assert np.array_equal(out[i].numpy(), pillow_resize(images[i], 20, 64, R.BICUBIC))
    transposed = torch.from_numpy(random_image(47, 33, 3, seed=5)).transpose(0, 1)  # [33, 47, 3], strided
    expected = pillow_resize(transposed.contiguous().numpy(), 50, 10, R.LANCZOS)
    assert np.array_equal(torch.ops.imagetotext.resize_pillow(transposed, 50, 10, int(R.LANCZOS)).numpy(), expected)


@pytest.mark.parametrize(
    "pixels,size,resample,message",
    [
        (torch.zeros(4, 4, 3), (2, 2), R.LANCZOS, "uint8"),
        (torch.zeros(4, 3, dtype=torch.uint8), (2, 2), R.LANCZOS, "height, width, channels"),
        (torch.zeros(4, 4, 5, dtype=torch.uint8), (2, 2), R.LANCZOS, "1 to 4 channels"),
        (torch.zeros(4, 4, 0, dtype=torch.uint8), (2, 2), R.LANCZOS, "1 to 4 channels"),
        (torch.zeros(0, 4, 3, dtype=torch.uint8), (2, 2), R.LANCZOS, "must not be empty"),
        (torch.zeros(4, 4, 3, dtype=torch.uint8), (0, 2), R.LANCZOS, "must be > 0"),
        (torch.zeros(4, 4, 3, dtype=torch.uint8), (2, -1), R.BICUBIC, "must be > 0"),
        (torch.zeros(4, 4, 3, dtype=torch.uint8), (2, 2), 6, "unknown filter"),
    ],
)
def test_bad_arguments_raise_value_error(pixels, size, resample, message):
    with pytest.raises(ValueError, match=message):
        torch.ops.imagetotext.resize_pillow(pixels, *size, int(resample))


@pytest.mark.gpu
@pytest.mark.parametrize("resample", ALL_FILTERS, ids=lambda r: r.name)
@pytest.mark.parametrize("channels", [1, 3, 4])
def test_cuda_matches_pillow(resample, channels):
    for source, target in SIZES + [((480, 640), (1536, 2048)), ((1536, 2048), (512, 512)), ((480, 640), (768, 768))]:
        pixels = random_image(*source, channels, seed=3)
        assert_same(pixels, *target, resample, device="cuda")
    batch = torch.from_numpy(np.stack([random_image(33, 47, channels, seed=s) for s in range(2)])).cuda()
    assert torch.equal(
        torch.ops.imagetotext.resize_pillow(batch, 70, 20, int(resample)).cpu(),
        torch.ops.imagetotext.resize_pillow(batch.cpu(), 70, 20, int(resample)),
    )
