"""imagetotext: captions for images from small vision-language models, natively, with INT8 and NF4.

The interface is the one the meme-search service uses::

    import imagetotext
    model = imagetotext.model_selector("Florence-2-base")
    model.download()
    caption = model.extract("meme.jpg")
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version as _version

import torch  # noqa: F401  (loads libtorch, which the native extension links against)

from . import _C, hub, quant, safetensors
from .errors import (
    CheckpointError,
    DeviceError,
    ImageError,
    ImageNotFoundError,
    ImageToTextError,
    InvalidArgumentError,
    ModelNotImplementedError,
    UnknownModelError,
)

try:
    __version__ = _version("imagetotext")
except PackageNotFoundError:  # running from a source tree without an installed distribution
    __version__ = "0+unknown"

#: Every model name :func:`model_selector` accepts, in the service's order.
available_models: list[str] = _C.available_models()
#: The service's default model.
default_model: str = _C.default_model
#: Pillow's MAX_IMAGE_PIXELS: larger images are refused before decoding.
max_image_pixels: int = _C.max_image_pixels

Captioner = _C.Captioner
load_rgb_image = _C.load_rgb_image
probe_image = _C.probe_image
set_log_level = _C.set_log_level
#: A tokenizer.json read natively: ``Tokenizer.from_file(path)``, ``encode``, ``decode``, ``token_to_id``,
#: ``id_to_token``, ``vocab_size``, exactly as the tokenizers library encodes and decodes.
Tokenizer = _C.Tokenizer


def model_selector(
    model_name: str,
    *,
    device: str = "auto",
    test_delay: float | None = None,
    max_image_pixels: int = max_image_pixels,
) -> Captioner:
    """Return the model registered under ``model_name``.

    Args:
        model_name: one of :data:`available_models`.
        device: ``"auto"``, ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
        test_delay: seconds the ``test`` model sleeps per image (the service's 1 s by default).
        max_image_pixels: images with more pixels are refused before decoding.

    Raises:
        UnknownModelError: (a ``ValueError``) for a name that is not registered; lists the valid names.
        ModelNotImplementedError: (a ``NotImplementedError``) for a model this version does not implement.
    """
    return _C.model_selector(model_name, device, test_delay, max_image_pixels)


def model_registry() -> list[dict[str, str]]:
    """The registry table: one dict per model with name, family, repo_id, revision and quantization."""
    return _C.model_registry()


__all__ = [
    "Captioner",
    "CheckpointError",
    "DeviceError",
    "ImageError",
    "ImageNotFoundError",
    "ImageToTextError",
    "InvalidArgumentError",
    "ModelNotImplementedError",
    "Tokenizer",
    "UnknownModelError",
    "available_models",
    "default_model",
    "hub",
    "load_rgb_image",
    "max_image_pixels",
    "model_registry",
    "model_selector",
    "probe_image",
    "quant",
    "safetensors",
    "set_log_level",
]
