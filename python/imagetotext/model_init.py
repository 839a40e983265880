"""The meme-search service's ``app/model_init.py``, backed by imagetotext.

Swapping the service over is one line::

    from imagetotext.model_init import model_selector   # was: from model_init import model_selector

Everything the service's module offers is here under the same names: ``device``, ``torch_dtype``,
``load_rgb_image``, one class per model (the service's seven and the quantized ones its plans add) and
``model_selector``. Each object keeps the service's attributes (``model_id``, ``revision``, ``downloaded``,
``model`` and ``processor`` or ``tokenizer``) and methods (``download()``, ``extract(image_path)``).

What changes (docs/migration.md has the full list): weights are loaded once per process and shared by every
object of the same model, so the service's per-job ``model_selector(name)`` + ``download()`` is free from the
second job on; ``model`` (and ``processor``/``tokenizer``) hold the native :class:`imagetotext.Captioner`
instead of transformers objects; ``extract_batch`` captions several images per call; errors are typed.
"""

from __future__ import annotations

import ctypes
import logging
import os

import torch

import imagetotext
from imagetotext import available_models, default_model
from imagetotext.errors import UnknownModelError

#: The service's choice of device ("mps" is not supported natively, so it is "cuda" when usable, else "cpu").
device: str = "cuda" if torch.cuda.is_available() else "cpu"
#: The service's dtype: float16 on CUDA, float32 otherwise. imagetotext picks per family (bfloat16 on CUDA).
torch_dtype: torch.dtype = torch.float16 if torch.cuda.is_available() else torch.float32
#: Kept for code that reads the service's module-level globals; imagetotext never sets them.
model = None
tokenizer = None


def load_rgb_image(image_path: str | os.PathLike) -> "PIL.Image.Image":  # noqa: F821
    """Open an image as the service does and return an RGB ``PIL.Image.Image``.

    The first GIF frame; alpha (RGBA, LA, palette or colour-key transparency) composited on white; every
    other mode converted to RGB. Decoded natively (:func:`imagetotext.load_rgb_image` gives the uint8 tensor
    without Pillow); needs Pillow only to build the returned image.
    """
    from PIL import Image  # only this service-compatibility function needs Pillow

    pixels = imagetotext.load_rgb_image(image_path).contiguous()
    height, width, _ = pixels.shape
    return Image.frombytes("RGB", (width, height), ctypes.string_at(pixels.data_ptr(), pixels.numel()))


class _NativeImageToText:
    """One registry model behind the service's attributes; the weights live in imagetotext's shared cache."""

    #: The registry name this class stands for.
    registry_name: str = ""
    #: The attribute the service's class keeps its preprocessing object in ("processor" or "tokenizer").
    preprocessor_attribute: str | None = "processor"

    def __init__(self, model_id: str, revision: str):
        self.model_id = model_id
        self.revision = revision
        self.model = None
        if self.preprocessor_attribute:
            setattr(self, self.preprocessor_attribute, None)
        self.downloaded = False

    def _captioner(self) -> imagetotext.Captioner:
        registry_id = next(row["repo_id"] for row in imagetotext.model_registry() if row["name"] == self.registry_name)
        # The service stores `revision` but always loads the hub's pinned one; so do we. A different model_id
        # (a fine-tune of the same architecture) is loaded instead of the registry's.
        checkpoint = None if self.model_id == registry_id else self.model_id
        return imagetotext.model_selector(self.registry_name, checkpoint=checkpoint)

    def download(self) -> None:
        """Load the weights (the first object of this model in the process downloads and loads them; every
        later one takes them from the cache at once). Idempotent."""
        if self.downloaded:
            return
        logging.info("INFO: loading %s (%s) with imagetotext...", self.registry_name, self.model_id)
        captioner = self._captioner()
        captioner.download()
        self.model = captioner
        if self.preprocessor_attribute:
            setattr(self, self.preprocessor_attribute, captioner)  # preprocessing is native, inside the model
        self.downloaded = True

    def extract(self, image_path: str | os.PathLike) -> str:
        """Caption one image file, loading the model first if needed."""
        if not self.downloaded:
            self.download()
        return self.model.extract(image_path)

    def extract_batch(self, image_paths: list[str | os.PathLike]) -> list[str]:
        """Caption several image files in one call; captions come back in the same order."""
        if not self.downloaded:
            self.download()
        return self.model.extract_batch(list(image_paths))


class TestImageToText(_NativeImageToText):
    """The service's test model: sleeps 1 s, returns ``"Test description for <file stem>"``."""

    __test__ = False  # not a pytest test class
    registry_name = "test"
    preprocessor_attribute = None
    #: Seconds each extract sleeps (the service's 1 s); tests of a service may lower it.
    delay: float = 1.0

    def __init__(self):
        super().__init__("test-dummy-model", "")
        self.device = "cpu"

    def _captioner(self) -> imagetotext.Captioner:
        return imagetotext.model_selector("test", test_delay=self.delay)


class MoondreamImageToText(_NativeImageToText):
    """moondream2 (revision 2025-01-09, as the service loads it), short caption."""

    registry_name = "moondream2"
    preprocessor_attribute = "tokenizer"


class MoondreamQuantizedImageToText(_NativeImageToText):
    """moondream2 with INT8 weights."""

    registry_name = "moondream2-int8"
    preprocessor_attribute = None  # the service's class has no tokenizer attribute


class Florence2BaseImageToText(_NativeImageToText):
    """Florence-2-base, ``<DETAILED_CAPTION>`` with 3 beams, as the service runs it."""

    registry_name = "Florence-2-base"


class Florence2LargeImageToText(_NativeImageToText):
    """Florence-2-large, ``<DETAILED_CAPTION>`` with 3 beams."""

    registry_name = "Florence-2-large"


class Florence2BaseQuantizedImageToText(_NativeImageToText):
    """Florence-2-base with NF4 weights and double quantization (the service plan's INT4 variant)."""

    registry_name = "Florence-2-base-int4"


class Florence2LargeQuantizedImageToText(_NativeImageToText):
    """Florence-2-large with NF4 weights and double quantization."""

    registry_name = "Florence-2-large-int4"


class SmolVLM256ImageToText(_NativeImageToText):
    """SmolVLM-256M-Instruct: "Can you describe this image?", up to 250 new tokens."""

    registry_name = "SmolVLM-256M-Instruct"


class SmolVLM500ImageToText(_NativeImageToText):
    """SmolVLM-500M-Instruct: "Can you describe this image?", up to 250 new tokens."""

    registry_name = "SmolVLM-500M-Instruct"


class SmolVLM256QuantizedImageToText(_NativeImageToText):
    """SmolVLM-256M-Instruct with INT8 weights (the service plan's INT8 variant)."""

    registry_name = "SmolVLM-256M-Instruct-int8"


class SmolVLM500QuantizedImageToText(_NativeImageToText):
    """SmolVLM-500M-Instruct with INT8 weights."""

    registry_name = "SmolVLM-500M-Instruct-int8"


# model_selector's table, with the arguments the service (and its plans) pass.
_SELECTOR = {
    "test": lambda: TestImageToText(),
    "Florence-2-base": lambda: Florence2BaseImageToText("microsoft/Florence-2-base", "2024-08-26"),
    "Florence-2-base-int4": lambda: Florence2BaseQuantizedImageToText("microsoft/Florence-2-base", "2024-08-26"),
    "Florence-2-large": lambda: Florence2LargeImageToText("microsoft/Florence-2-large", "2024-08-26"),
    "Florence-2-large-int4": lambda: Florence2LargeQuantizedImageToText("microsoft/Florence-2-large", "2024-08-26"),
    "SmolVLM-256M-Instruct": lambda: SmolVLM256ImageToText("HuggingFaceTB/SmolVLM-256M-Instruct", "2024-08-26"),
    "SmolVLM-256M-Instruct-int8": lambda: SmolVLM256QuantizedImageToText("HuggingFaceTB/SmolVLM-256M-Instruct",
                                                                         "2024-08-26"),
    "SmolVLM-500M-Instruct": lambda: SmolVLM500ImageToText("HuggingFaceTB/SmolVLM-500M-Instruct", "2024-08-26"),
    "SmolVLM-500M-Instruct-int8": lambda: SmolVLM500QuantizedImageToText("HuggingFaceTB/SmolVLM-500M-Instruct",
                                                                         "2024-08-26"),
    "moondream2": lambda: MoondreamImageToText("vikhyatk/moondream2", "2024-08-26"),
    "moondream2-int8": lambda: MoondreamQuantizedImageToText("vikhyatk/moondream2", "2025-01-09"),
}


def model_selector(model_name: str) -> _NativeImageToText:
    """The service's ``model_selector``: a new model object for ``model_name``, its weights not loaded yet
    (``download()`` or the first ``extract`` loads them, from the process-wide cache after the first time).

    Raises:
        UnknownModelError: (a ``ValueError``, as the service raises) for a name not in ``available_models``.
    """
    if model_name not in _SELECTOR:
        message = f"model_name {model_name} is not in available_models: {', '.join(available_models)}"
        logging.error(message)
        raise UnknownModelError(message)
    return _SELECTOR[model_name]()


__all__ = [
    "Florence2BaseImageToText",
    "Florence2BaseQuantizedImageToText",
    "Florence2LargeImageToText",
    "Florence2LargeQuantizedImageToText",
    "MoondreamImageToText",
    "MoondreamQuantizedImageToText",
    "SmolVLM256ImageToText",
    "SmolVLM256QuantizedImageToText",
    "SmolVLM500ImageToText",
    "SmolVLM500QuantizedImageToText",
    "TestImageToText",
    "available_models",
    "default_model",
    "device",
    "load_rgb_image",
    "model_selector",
    "torch_dtype",
]
