"""imagetotext: captions for images from small vision-language models, natively, with INT8 and NF4.

The interface is the one the meme-search service uses::

    import imagetotext
    model = imagetotext.model_selector("Florence-2-base")
    model.download()
    caption = model.extract("meme.jpg")
"""

from __future__ import annotations

import atexit
import os
from collections.abc import Callable
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
    dtype: str = "auto",
    quantization: str | None = None,
    checkpoint: str | os.PathLike | None = None,
    max_new_tokens: int = 0,
    test_delay: float | None = None,
    max_image_pixels: int = max_image_pixels,
    cache_dir: str | os.PathLike | None = None,
    progress: Callable[[str, int, int], None] | None = None,
    keep_dense: list[str] | None = None,
) -> Captioner:
    """Return the model registered under ``model_name``.

    Building the object is cheap; ``download()`` (or the first ``extract``) loads the weights. Loaded weights
    are shared by every object with the same model, checkpoint, device, dtype, quantization and settings in
    this process, so building a new object per job (as the service does) loads them only once;
    :func:`unload` and :func:`clear_cache` free them.

    Args:
        model_name: one of :data:`available_models`.
        device: ``"auto"``, ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
        dtype: ``"auto"`` (bfloat16 on CUDA, float32 on the CPU), ``"float32"``, ``"float16"`` or ``"bfloat16"``.
        quantization: ``None`` (the registry's), ``"none"``, ``"int8"``, ``"llm_int8"``, ``"nf4"`` or ``"fp4"``.
        checkpoint: a local directory or hub id to load instead of the registry's hub id.
        max_new_tokens: the most tokens a caption may have; 0 keeps the service's setting for the model.
        test_delay: seconds the ``test`` model sleeps per image (the service's 1 s by default).
        max_image_pixels: images with more pixels are refused before decoding.
        cache_dir: the Hugging Face cache to use instead of the environment's.
        progress: ``progress(filename, received_bytes, total_bytes)``, called while weights download.
        keep_dense: Linear layers a quantized variant keeps dense, as transformers' ``llm_int8_skip_modules``
            (an entry matches a layer's full name, a dotted suffix or a dotted prefix, e.g. ``"lm_head"`` or
            ``"model.vision_tower"``); ``None`` keeps the family's default (SmolVLM: ``["lm_head"]``;
            Florence-2: ``["model.vision_tower", "model.multi_modal_projector"]``).

    Raises:
        UnknownModelError: (a ``ValueError``) for a name that is not registered; lists the valid names.
        ModelNotImplementedError: (a ``NotImplementedError``) for a model this version does not implement.
        InvalidArgumentError: (a ``ValueError``) for an unknown device, dtype or quantization.
    """
    return _C.model_selector(model_name, device, dtype, quantization, _fspath_or_empty(checkpoint), max_new_tokens,
                             test_delay, max_image_pixels, _fspath_or_none(cache_dir), progress, keep_dense)


def load_model(
    checkpoint: str | os.PathLike,
    *,
    revision: str = "main",
    quantization: str | None = None,
    device: str = "auto",
    dtype: str = "auto",
    max_new_tokens: int = 0,
    max_image_pixels: int = max_image_pixels,
    cache_dir: str | os.PathLike | None = None,
    progress: Callable[[str, int, int], None] | None = None,
    keep_dense: list[str] | None = None,
) -> Captioner:
    """A model for any checkpoint: a local directory or a Hugging Face hub id.

    The family comes from ``config.json``'s ``model_type`` (``idefics3``/``smolvlm``: SmolVLM, ``florence2``:
    Florence-2, ``moondream1``: moondream2). ``quantization`` is applied at load time; ``None`` loads the
    checkpoint as stored: a pre-quantized one (:func:`quantize_checkpoint`, or transformers + bitsandbytes)
    takes its format and skipped modules from ``config.json``'s ``quantization_config``, and its quantized
    layers load without re-quantizing. ``keep_dense`` as in :func:`model_selector`. Caption with
    ``model.caption(image_or_path, max_new_tokens=...)``.

    Raises:
        CheckpointError: (a ``RuntimeError``) for a missing or unreadable ``config.json`` or an unsupported
            ``model_type``, naming the checkpoint.
    """
    return _C.load_model(os.fspath(checkpoint), revision, device, dtype, quantization, max_new_tokens,
                         max_image_pixels, _fspath_or_none(cache_dir), progress, keep_dense)


def quantize_checkpoint(
    model: str | os.PathLike,
    to: str,
    outdir: str | os.PathLike,
    *,
    keep_dense: list[str] | None = None,
    revision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    on_layer: Callable[[int, int, str], None] | None = None,
) -> dict[str, object]:
    """Write a pre-quantized checkpoint that :func:`load_model` (and transformers + bitsandbytes) load without
    quantizing: exactly the Linear layers the model's own policy quantizes (the same code that loads it; SmolVLM
    keeps ``lm_head`` dense, Florence-2 its vision tower and projector), in bitsandbytes' state-dict layout
    (NF4/FP4: ``weight``, ``weight.absmax``, ``weight.quant_map``, ``weight.nested_absmax``,
    ``weight.nested_quant_map``, ``weight.quant_state.bitsandbytes__nf4``; INT8: ``weight`` + ``SCB`` +
    ``weight_format``); every other tensor as stored. ``config.json`` gains transformers' ``quantization_config``;
    tokenizer, processor and generation files are copied.

    Args:
        model: a registry name (its hub checkpoint), a checkpoint directory or a hub id.
        to: ``"nf4"``, ``"fp4"`` or ``"int8"`` (``"llm_int8"`` writes the same INT8 layout).
        outdir: a new or empty directory.
        keep_dense: layers to keep dense instead of the family's default (see :func:`model_selector`).
        revision: the hub revision (default: the registry's, or ``"main"``).
        cache_dir: the Hugging Face cache to use instead of the environment's.
        on_layer: ``on_layer(done, total, layer_name)`` after each layer is quantized (a progress bar).

    Returns:
        ``{"quantized_layers", "dense_layers", "bytes_before", "bytes_after", "files"}``.

    Raises:
        InvalidArgumentError: (a ``ValueError``) for a bad ``to``, an ``outdir`` that is not an empty directory,
            or a checkpoint that is already quantized.
        UnknownModelError: (a ``ValueError``) for an unknown model name.
        CheckpointError: (a ``RuntimeError``) when ``outdir`` cannot be written or the source cannot be read.
    """
    return _C.quantize_checkpoint(os.fspath(model), to, os.fspath(outdir), keep_dense, revision or "",
                                  _fspath_or_none(cache_dir), None, on_layer)


def weight_memory(
    model: str | os.PathLike,
    quantization: str = "none",
    *,
    keep_dense: list[str] | None = None,
    dtype: str = "bfloat16",
    revision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    offline: bool | None = None,
) -> int:
    """Bytes of a model's weights once loaded with ``quantization``: every tensor the model reads, floating
    ones in ``dtype`` (bfloat16 is what CUDA loads), Linear layers in the quantized layout of the layers the
    family's policy quantizes. Computed from the checkpoint's tensor shapes (the model is built on the meta
    device; nothing is read or converted). ``model``: a registry name, directory or hub id (fetched if missing,
    unless ``offline``)."""
    return _C.weight_memory(os.fspath(model), quantization, keep_dense, dtype, revision or "",
                            _fspath_or_none(cache_dir), offline)


def unload(name: str) -> int:
    """Free the cached weights of every variant of model ``name`` (a registry name, or the checkpoint given to
    :func:`load_model`); returns how many were loaded. Objects that used them load again on their next call."""
    return _C.unload(name)


def clear_cache() -> int:
    """Free every cached model; returns how many were loaded."""
    return _C.clear_cache()


def cache_info() -> dict[str, object]:
    """The weight cache: ``{"loads": n, "models": [{"name", "key", "loaded"}, ...]}``; ``loads`` counts every
    time this process loaded weights, so it stays put while jobs reuse cached models."""
    return {"loads": _C.load_count(), "models": _C.cache_info()}


def _fspath_or_none(path: str | os.PathLike | None) -> str | None:
    return None if path is None else os.fspath(path)


def _fspath_or_empty(path: str | os.PathLike | None) -> str:
    return "" if path is None else os.fspath(path)


def model_registry() -> list[dict[str, str]]:
    """The registry table: one dict per model with name, family, repo_id, revision and quantization."""
    return _C.model_registry()


# Free the weights while the interpreter (and the CUDA runtime) are still whole.
atexit.register(_C.clear_cache)


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
    "cache_info",
    "clear_cache",
    "default_model",
    "hub",
    "load_model",
    "load_rgb_image",
    "max_image_pixels",
    "model_registry",
    "model_selector",
    "probe_image",
    "quant",
    "quantize_checkpoint",
    "safetensors",
    "set_log_level",
    "unload",
    "weight_memory",
]
