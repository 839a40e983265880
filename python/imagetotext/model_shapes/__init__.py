"""The weight memory of every registered model without its checkpoint.

Each folder here stands for one registered checkpoint (hub id with ``/`` as ``--``): its ``config.json`` and, in
``tensors.json``, the name, dtype and shape of every tensor its ``model.safetensors`` holds, as transformers builds
the model from that config (``scripts/generate_model_shapes.py`` writes them; moondream2, which has no
transformers class, from its own module layout). :func:`config_weight_memory` hands those shapes, as meta
tensors, to the same weight_memory that measures a downloaded checkpoint: one computation for both.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from imagetotext import _C
from imagetotext.errors import CheckpointError, ModelNotImplementedError, UnknownModelError

#: Where the shape files are (inside the installed package).
DIRECTORY = Path(__file__).resolve().parent

_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
           "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
           "BOOL": torch.bool}


def shapes_directory(model: str | os.PathLike) -> Path:
    """The folder with the config.json and tensors.json of ``model``: a registry name, or such a folder itself.

    Raises:
        UnknownModelError: for a name that is not registered.
        ModelNotImplementedError: for the test model (it has no weights).
        CheckpointError: when the package ships no shapes for the model's checkpoint.
    """
    if os.path.isdir(model):
        directory = Path(model)
    else:
        row = next((r for r in _C.model_registry() if r["name"] == model), None)
        if row is None:
            names = ", ".join(r["name"] for r in _C.model_registry())
            raise UnknownModelError(f"unknown model '{model}'; available models: {names}")
        if row["family"] == "test":
            raise ModelNotImplementedError(f"model '{model}' has no weights (it is the service's test model)")
        directory = DIRECTORY / row["repo_id"].replace("/", "--")
    for name in ("config.json", "tensors.json"):
        if not (directory / name).is_file():
            raise CheckpointError(f"no tensor shapes for model '{model}': {directory / name} is missing")
    return directory


def meta_tensors(directory: str | os.PathLike) -> dict[str, torch.Tensor]:
    """tensors.json as meta tensors (shape and dtype, no data)."""
    path = Path(directory) / "tensors.json"
    try:
        entries = json.loads(path.read_text())["tensors"]
        return {name: torch.empty(entry["shape"], dtype=_DTYPES[entry["dtype"]], device="meta")
                for name, entry in entries.items()}
    except (ValueError, KeyError, TypeError) as error:
        raise CheckpointError(f"{path}: not a tensor shape file ({error!r})") from error


def config_weight_memory(
    model: str | os.PathLike,
    quantization: str = "none",
    *,
    keep_dense: list[str] | None = None,
    dtype: str = "bfloat16",
) -> int:
    """What :func:`imagetotext.weight_memory` gives for ``model``'s checkpoint, computed from the shapes its config
    gives (shipped with the package), so nothing is downloaded. ``model``: a registry name, or a folder with a
    config.json and a tensors.json."""
    directory = shapes_directory(model)
    return _C.weight_memory_of_tensors(str(directory), meta_tensors(directory), quantization, keep_dense, dtype)


__all__ = ["DIRECTORY", "config_weight_memory", "meta_tensors", "shapes_directory"]
