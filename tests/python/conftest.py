from __future__ import annotations

import pytest
import torch

import imagetotext


def pytest_collection_modifyitems(config, items):
    # GPU tests run on the GPU machine (scripts/gpu_check.sh) and are skipped cleanly everywhere else.
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="no CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


needs_codecs = pytest.mark.skipif(
    not imagetotext._C.file_decoding_available,
    reason="built with IMAGETOTEXT_WITH_IMAGE_CODECS=OFF (no file decoding)",
)


@pytest.fixture(scope="session")
def tiny_smolvlm_checkpoint(tmp_path_factory):
    """A random SmolVLM checkpoint with the real processor geometry, written by transformers (test_smolvlm.py)."""
    pytest.importorskip("transformers")
    from test_smolvlm import write_real_geometry_checkpoint

    path = tmp_path_factory.mktemp("tiny_smolvlm_checkpoint")
    write_real_geometry_checkpoint(path)
    return path


@pytest.fixture(scope="session")
def tiny_florence2_checkpoint(tmp_path_factory):
    """A random Florence-2 checkpoint in the original (microsoft/Florence-2-*) layout the service loads, with a
    tokenizer and 768x768 input (test_florence2_processor.py)."""
    pytest.importorskip("transformers")
    pytest.importorskip("tokenizers")
    from test_florence2_processor import write_captioning_checkpoints, write_tokenizer

    root = tmp_path_factory.mktemp("tiny_florence2_checkpoint")
    write_captioning_checkpoints(root, write_tokenizer(root / "tokenizer.json"))
    return root / "original"
