"""The imagetotext command line with the test model."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from PIL import Image

import imagetotext
from conftest import needs_codecs


def run_cli(*args, env=None):
    environment = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", "imagetotext", *args], capture_output=True, text=True, timeout=120,
                          env=environment)


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


# --- caption: folders, globs, batches ------------------------------------------------------------------------


def make_folder(tmp_path, count=3):
    folder = tmp_path / "memes"
    folder.mkdir()
    for i in range(count):
        Image.new("RGB", (8 + i, 8), (i, 2 * i, 3 * i)).save(folder / f"meme_{i}.png")
    (folder / "notes.txt").write_text("not an image, and not picked up from a folder")
    return folder


@needs_codecs
def test_caption_folders_globs_and_batches_in_order(tmp_path):
    folder = make_folder(tmp_path)
    single = tmp_path / "single.png"
    Image.new("RGB", (4, 4)).save(single)
    result = run_cli("caption", "--model", "test", "--json", "--batch-size", "2", str(folder),
                     str(tmp_path / "sin*.png"))
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    expected = [str(folder / f"meme_{i}.png") for i in range(3)] + [str(single)]
    assert [line["path"] for line in lines] == expected
    assert [line["caption"] for line in lines] == [f"Test description for {p.rsplit('/', 1)[1][:-4]}" for p in expected]
    assert "Traceback" not in result.stderr


@needs_codecs
def test_caption_plain_output_and_errors_on_stderr(tmp_path):
    folder = make_folder(tmp_path, count=1)
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    result = run_cli("caption", "--model", "test", "--batch-size", "4", str(folder), str(tmp_path / "none*.jpg"))
    assert result.returncode == 1
    assert result.stdout == f"{folder / 'meme_0.png'}\tTest description for meme_0\n"
    assert "broken.png" in result.stderr and "none*.jpg" in result.stderr and "no file matches" in result.stderr
    assert "Traceback" not in result.stderr


def test_caption_refuses_a_bad_batch_size_and_an_unsupported_checkpoint(tmp_path):
    result = run_cli("caption", "--model", "test", "--batch-size", "0", "x.png")
    assert result.returncode == 2 and "--batch-size" in result.stderr
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    result = run_cli("caption", "--model", str(tmp_path), "x.png")
    assert result.returncode == 2
    assert "bert" in result.stderr and str(tmp_path) in result.stderr and "Traceback" not in result.stderr


# --- models, download ------------------------------------------------------------------------------------------


def fake_cached_checkpoint(hub_cache, repo_id, tensors):
    """A checkpoint laid out in the hub cache as huggingface_hub lays it out (refs/main -> snapshot)."""
    from safetensors.torch import save_file

    repo = hub_cache / ("models--" + repo_id.replace("/", "--"))
    commit = "0" * 40
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    save_file(tensors, str(snapshot / "model.safetensors"))


# The weight memory column against bitsandbytes and transformers: test_quantize_checkpoint.py.


def test_download_fetches_a_checkpoint_folder_and_reports_offline_misses(tmp_path):
    import torch
    from safetensors.torch import save_file

    local = tmp_path / "local-model"
    local.mkdir()
    (local / "config.json").write_text(json.dumps({"model_type": "idefics3"}))
    (local / "tokenizer.json").write_text("{}")
    save_file({"w": torch.zeros(2, 2)}, str(local / "model.safetensors"))
    result = run_cli("download", str(local))
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [str(local / "config.json"), str(local / "tokenizer.json"),
                                          str(local / "model.safetensors")]

    offline = {"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "empty-cache")}
    result = run_cli("download", "SmolVLM-256M-Instruct", env=offline)
    assert result.returncode == 2
    assert "HuggingFaceTB/SmolVLM-256M-Instruct" in result.stderr and "Traceback" not in result.stderr
    assert run_cli("download", "test", env=offline).returncode == 0
    result = run_cli("download", "Florence-3", env=offline)
    assert result.returncode == 2 and "Florence-3" in result.stderr


# --- validate ----------------------------------------------------------------------------------------------------


@needs_codecs
def test_validate_compares_two_models_side_by_side(tmp_path):
    folder = make_folder(tmp_path, count=2)
    result = run_cli("validate", "--base", "test", "--quantized", "test", "--json", str(folder),
                     str(tmp_path / "missing.png"))
    assert result.returncode == 1
    report = json.loads(result.stdout)
    assert report["summary"] == {"base": "test", "quantized": "test", "images": 2, "failed": 1,
                                 "exact_match_rate": 1.0, "mean_similarity": 1.0, "degenerate": 0}
    assert report["images"][0]["base"] == report["images"][0]["quantized"] == "Test description for meme_0"
    assert "missing.png" in report["images"][2]["error"]


def test_degenerate_and_similarity():
    from imagetotext.cli import degenerate, similarity

    assert degenerate("") == "empty"
    assert degenerate("a cat a cat a cat on a mat") == "repeats 'a cat'"
    assert degenerate("the the the") == "repeats 'the'"
    assert degenerate("A cat sits on a mat next to a dog.") is None
    # difflib's ratio over words: 2 * matches / total.
    assert similarity("a cat on a mat", "a cat on a mat") == 1.0
    assert similarity("a cat on a mat", "a dog on a mat") == 2 * 4 / 10
    assert similarity("", "") == 1.0
