"""`imagetotext models` without any checkpoint: the weight memory of every variant computed from the tensor shapes
its config gives (python/imagetotext/model_shapes, written by scripts/generate_model_shapes.py with transformers)."""

from __future__ import annotations

import json
import math
import shutil
import sys
from pathlib import Path

import pytest
import torch

import imagetotext
from imagetotext.model_shapes import DIRECTORY, config_weight_memory, meta_tensors
from test_cli import run_cli

transformers = pytest.importorskip("transformers")
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
import generate_model_shapes as generator  # noqa: E402


def shipped(repo_id: str) -> dict:
    return json.loads((DIRECTORY / repo_id.replace("/", "--") / "tensors.json").read_text())["tensors"]


def parameter_count(tensors: dict) -> int:
    return sum(math.prod(entry["shape"]) for entry in tensors.values())


def write_shapes(checkpoint: Path, directory: Path) -> Path:
    """The shape folder the generator writes for a checkpoint's config (transformers on the meta device)."""
    config = transformers.AutoConfig.from_pretrained(checkpoint)
    generator.write(directory, "tiny/model", "main", json.loads((checkpoint / "config.json").read_text()),
                    generator.transformers_tensors(config), "test")
    return directory / "tiny--model"


def test_every_variant_shows_its_computed_memory_with_an_empty_cache(tmp_path):
    env = {"HF_HUB_CACHE": str(tmp_path / "empty"), "HF_HUB_OFFLINE": "1"}
    result = run_cli("models", "--json", env=env)
    assert result.returncode == 0, result.stderr
    rows = {row["name"]: row for row in json.loads(result.stdout)}
    assert list(rows) == imagetotext.available_models
    for name, row in rows.items():
        assert row["measured_weight_bytes"] is None or name == "test", name
        if row["family"] == "test":
            continue
        if name == "moondream2-int8":  # its quantized layers follow moondream2's model, not built in this version
            assert row["computed_weight_bytes"] is None and "not built" in row["computed_weights"]
            continue
        assert isinstance(row["computed_weight_bytes"], int) and row["computed_weight_bytes"] > 0, row
        assert row["measured_weights"] == "not cached"

    # Dense: every tensor of the checkpoint in bf16 (the oracle: transformers' shapes, 2 bytes each).
    for name, repo in [("SmolVLM-256M-Instruct", "HuggingFaceTB/SmolVLM-256M-Instruct"),
                       ("Florence-2-large", "microsoft/Florence-2-large"), ("moondream2", "vikhyatk/moondream2")]:
        assert rows[name]["computed_weight_bytes"] == 2 * parameter_count(shipped(repo)), name
    # int8 (row-wise absmax, bitsandbytes' Int8Params: int8 codes + a float32 scale per row) for every nn.Linear
    # transformers builds but the untied lm_head.
    config = transformers.AutoConfig.from_pretrained(DIRECTORY / "HuggingFaceTB--SmolVLM-256M-Instruct")
    with torch.device("meta"):
        model = transformers.Idefics3ForConditionalGeneration(config)
    linears = [m for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and n != "lm_head"]
    saved = sum(m.out_features * m.in_features * 2 - (m.out_features * m.in_features + 4 * m.out_features)
                for m in linears)
    assert rows["SmolVLM-256M-Instruct-int8"]["computed_weight_bytes"] == \
        rows["SmolVLM-256M-Instruct"]["computed_weight_bytes"] - saved
    for name in ("Florence-2-base-int4", "Florence-2-large-int4", "SmolVLM-500M-Instruct-int8"):
        dense = rows[name.rsplit("-", 1)[0]]["computed_weight_bytes"]
        assert 0 < rows[name]["computed_weight_bytes"] < dense, name

    table = run_cli("models", env=env)
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].split() == ["name", "family", "repo_id", "revision", "quantization", "computed", "measured"]
    for name in imagetotext.available_models:
        line = next(line for line in lines if line.startswith(name + " "))
        assert name in ("test", "moondream2-int8") or "MiB" in line, line
        assert name == "test" or "not cached" in line, line
    assert "computed: from the tensor shapes" in table.stdout and "measured: from the checkpoint" in table.stdout


@pytest.mark.parametrize("family", ["smolvlm", "florence2"])
def test_computed_from_the_config_equals_measured_from_the_checkpoint(family, request, tmp_path):
    if family == "smolvlm":
        checkpoint = request.getfixturevalue("tiny_smolvlm_checkpoint")
    else:  # the native layout beside the original one (the generator writes what transformers saves)
        checkpoint = request.getfixturevalue("tiny_florence2_checkpoint").parent / "native"
    directory = write_shapes(checkpoint, tmp_path)

    # The generator's shapes are what save_pretrained wrote (names, dtypes, shapes).
    from safetensors import safe_open
    with safe_open(str(checkpoint / "model.safetensors"), "pt") as saved:
        written = {name: list(saved.get_slice(name).get_shape()) for name in saved.keys()}
    assert {name: entry["shape"] for name, entry in shipped_from(directory).items()} == written

    for quantization in ("none", "int8", "nf4"):
        for dtype in ("bfloat16", "float32"):
            assert config_weight_memory(directory, quantization, dtype=dtype) == \
                imagetotext.weight_memory(checkpoint, quantization, dtype=dtype), (quantization, dtype)
    if family == "florence2":
        # The same model in microsoft/Florence-2-*'s original layout: measured counts every tensor stored, here
        # final_logits_bias (zeros) and the tied embedding's encoder/decoder copies beside `shared`.
        with safe_open(str(checkpoint.parent / "original" / "model.safetensors"), "pt") as saved:
            original = {name: math.prod(saved.get_slice(name).get_shape()) for name in saved.keys()}
        extra = sum(original.values()) - sum(math.prod(shape) for shape in written.values())
        assert extra == original["language_model.final_logits_bias"] + \
            original["language_model.model.encoder.embed_tokens.weight"] + \
            original["language_model.model.decoder.embed_tokens.weight"]
        for quantization in ("none", "nf4"):
            assert imagetotext.weight_memory(checkpoint.parent / "original", quantization) == \
                config_weight_memory(directory, quantization) + 2 * extra


def shipped_from(directory: Path) -> dict:
    return json.loads((directory / "tensors.json").read_text())["tensors"]


def test_shipped_shapes_are_those_of_the_configs():
    # Every registered checkpoint has its shapes.
    for row in imagetotext.model_registry():
        if row["family"] != "test":
            assert meta_tensors(DIRECTORY / row["repo_id"].replace("/", "--")), row["name"]
    # Regenerated for one registered config, they are the shipped ones (config and tensors).
    repo = "HuggingFaceTB/SmolVLM-256M-Instruct"
    config = generator.CHECKPOINTS[repo]()
    folder = DIRECTORY / repo.replace("/", "--")
    assert json.loads(config.to_json_string(use_diff=False)) == json.loads((folder / "config.json").read_text())
    assert generator.transformers_tensors(config) == shipped(repo)
    # The parameter counts the references derive for the published models (vlm_models.md A.1, moondream2.md 0).
    assert parameter_count(shipped("HuggingFaceTB/SmolVLM-256M-Instruct")) == 256_484_928
    assert parameter_count(shipped("HuggingFaceTB/SmolVLM-500M-Instruct")) == 507_482_304
    assert parameter_count(shipped("vikhyatk/moondream2")) == 1_927_237_104
    # moondream2's layout: the tensors the candle dump of revision 2025-01-09 lists (moondream2.md 1.1).
    moondream = shipped("vikhyatk/moondream2")
    for name, shape in [("model.vision.blocks.9.mlp.fc1.bias", [4304]), ("model.vision.proj_mlp.fc1.bias", [8192]),
                        ("model.region.coord_encoder.weight", [2048, 256]), ("model.text.blocks.0.attn.qkv.bias", [6144]),
                        ("model.text.blocks.13.mlp.fc1.weight", [8192, 2048]),
                        ("model.vision.blocks.1.mlp.fc2.weight", [1152, 4304]), ("model.text.post_ln.weight", [2048])]:
        assert moondream[name] == {"dtype": "F16", "shape": shape}, name


def test_bad_shape_files_are_named_errors(tmp_path):
    with pytest.raises(imagetotext.UnknownModelError, match="Florence-3"):
        config_weight_memory("Florence-3")
    with pytest.raises(imagetotext.ModelNotImplementedError, match="test"):
        config_weight_memory("test")
    folder = tmp_path / "broken"
    shutil.copytree(DIRECTORY / "microsoft--Florence-2-base", folder)
    (folder / "tensors.json").write_text("{}")
    with pytest.raises(imagetotext.CheckpointError, match="tensors.json"):
        config_weight_memory(folder)
    (folder / "tensors.json").unlink()
    with pytest.raises(imagetotext.CheckpointError, match="tensors.json"):
        config_weight_memory(folder)
