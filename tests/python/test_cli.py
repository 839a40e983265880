"""The imagetotext command line with the test model."""

from __future__ import annotations

import json
import subprocess
import sys

from PIL import Image

import imagetotext
from conftest import needs_codecs


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "imagetotext", *args], capture_output=True, text=True, timeout=120)


@needs_codecs
def test_caption_reports_each_file_and_goes_on_after_a_bad_one(tmp_path):
    good = tmp_path / "good_meme.png"
    Image.new("RGB", (4, 4)).save(good)
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    result = run_cli("caption", "--model", "test", "--json", str(good), str(bad), str(tmp_path / "missing.png"))
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert result.returncode == 1
    assert lines[0] == {"path": str(good), "caption": "Test description for good_meme"}
    assert "bad.png" in lines[1]["error"] and "not a supported image format" in lines[1]["error"]
    assert "missing.png" in lines[2]["error"]


def test_unknown_model_is_refused_with_the_valid_names():
    result = run_cli("caption", "--model", "Florence-3", "x.png")
    assert result.returncode == 2
    assert "Florence-3" in result.stderr and "SmolVLM-256M-Instruct" in result.stderr


def test_models_lists_the_registry():
    result = run_cli("models")
    assert result.returncode == 0
    for name in imagetotext.available_models:
        assert name in result.stdout
