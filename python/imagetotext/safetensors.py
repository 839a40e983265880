"""safetensors checkpoints, read and written natively with the signatures of ``safetensors.torch``.

``load_file`` memory-maps the file: on the CPU the tensors alias the mapping (no copy) and keep it open for
as long as they live. Every header is validated before a tensor is made; an invalid file raises
:class:`imagetotext.CheckpointError` naming the file and, where there is one, the tensor.
"""

from __future__ import annotations

import os
from typing import Dict, Optional, Union

import torch

from . import _C

PathLike = Union[str, "os.PathLike[str]"]


def load_file(filename: PathLike, device: Union[str, int, torch.device] = "cpu") -> Dict[str, torch.Tensor]:
    """Load a ``.safetensors`` file (or a sharded checkpoint's ``.index.json``) as ``{name: tensor}`` on ``device``."""
    tensors, _ = _C.load_safetensors(os.fspath(filename), _device_name(device))
    return tensors


def load_metadata(filename: PathLike) -> Dict[str, str]:
    """The ``__metadata__`` of a ``.safetensors`` file (the ``metadata`` of a sharded checkpoint's index)."""
    _, metadata = _C.load_safetensors(os.fspath(filename), "cpu")
    return metadata


def save_file(tensors: Dict[str, torch.Tensor], filename: PathLike, metadata: Optional[Dict[str, str]] = None) -> None:
    """Write ``tensors`` to ``filename`` with the optional string ``metadata``, as ``safetensors.torch`` lays it out.

    Tensors on any device and of any layout are written (copied to contiguous CPU memory where needed).
    The file appears under its name only once it is complete.
    """
    _C.save_safetensors(tensors, os.fspath(filename), metadata or {})


def _device_name(device: Union[str, int, torch.device]) -> str:
    # safetensors.torch accepts a CUDA ordinal as a bare int.
    return f"cuda:{device}" if isinstance(device, int) else str(device)


__all__ = ["load_file", "load_metadata", "save_file"]
