"""torch.ops.imagetotext.normalize_pixels against the formula in plain torch, on CPU and CUDA."""

from __future__ import annotations

import pytest
import torch

import imagetotext  # noqa: F401  (registers torch.ops.imagetotext)

MEAN = [0.485, 0.456, 0.406]
STD = [0.229, 0.224, 0.225]
DTYPES = [torch.float32, torch.bfloat16, torch.float16]


def reference(pixels, dtype):
    mean = torch.tensor(MEAN, dtype=torch.float32)
    std = torch.tensor(STD, dtype=torch.float32)
    value = (pixels.cpu().float() * (1.0 / 255.0) - mean) / std
    return value.movedim(-1, -3).contiguous().to(dtype)


def normalize(pixels, dtype):
    return torch.ops.imagetotext.normalize_pixels(pixels, MEAN, STD, 1.0 / 255.0, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 1, 3), (17, 300, 3), (2, 33, 65, 3)])
def test_cpu_matches_the_formula(shape, dtype):
    pixels = torch.randint(0, 256, shape, dtype=torch.uint8)
    assert torch.equal(normalize(pixels, dtype), reference(pixels, dtype))


def test_non_contiguous_input():
    pixels = torch.randint(0, 256, (40, 30, 3), dtype=torch.uint8).transpose(0, 1)
    assert torch.equal(normalize(pixels, torch.float32), reference(pixels, torch.float32))


@pytest.mark.parametrize(
    "args,message",
    [
        ((torch.zeros(4, 4, 3), MEAN, STD), "uint8"),
        ((torch.zeros(4, 3, dtype=torch.uint8), MEAN, STD), "height, width, channels"),
        ((torch.zeros(4, 4, 3, dtype=torch.uint8), [0.5], STD), "one value per channel"),
        ((torch.zeros(4, 4, 3, dtype=torch.uint8), MEAN, [1.0, 0.0, 1.0]), "zero"),
    ],
)
def test_bad_arguments_raise_value_error(args, message):
    with pytest.raises(ValueError, match=message):
        torch.ops.imagetotext.normalize_pixels(*args, 1.0, torch.float32)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES)
def test_cuda_matches_cpu(dtype):
    pixels = torch.randint(0, 256, (3, 65, 129, 3), dtype=torch.uint8)
    on_gpu = normalize(pixels.cuda(), dtype)
    assert on_gpu.is_cuda
    assert torch.equal(on_gpu.cpu(), normalize(pixels, dtype))
    assert torch.equal(on_gpu.cpu(), reference(pixels, dtype))
