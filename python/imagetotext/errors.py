"""Exceptions raised by imagetotext.

Each derives from :class:`ImageToTextError` and from the built-in exception a caller would already catch,
so ``except ValueError`` and ``except FileNotFoundError`` keep working.
"""


class ImageToTextError(Exception):
    """Base class of every imagetotext error."""


class ImageNotFoundError(ImageToTextError, FileNotFoundError):
    """An image path that does not exist. ``filename`` holds the path."""


class ImageError(ImageToTextError, ValueError):
    """A file that is not a readable image: empty, truncated, corrupt, a directory, or over the pixel limit."""


class UnknownModelError(ImageToTextError, ValueError):
    """A model name that is not registered; the message lists the valid names."""


class ModelNotImplementedError(ImageToTextError, NotImplementedError):
    """A registered model whose family this version of imagetotext does not implement yet."""


class CheckpointError(ImageToTextError, RuntimeError):
    """A checkpoint that is missing, truncated or does not match the model."""


class DeviceError(ImageToTextError, RuntimeError):
    """A device that is not available, or ran out of memory."""


class InvalidArgumentError(ImageToTextError, ValueError):
    """An argument with the wrong value, dtype, device or shape."""


__all__ = [
    "ImageToTextError",
    "ImageNotFoundError",
    "ImageError",
    "UnknownModelError",
    "ModelNotImplementedError",
    "CheckpointError",
    "DeviceError",
    "InvalidArgumentError",
]
