"""`imagetotext quantize` / imagetotext.quantize_checkpoint on the tiny SmolVLM and Florence-2 checkpoints: the
written tensors against bitsandbytes' own quantization of the dense weights, the quantized layers against the
nn.Linear modules transformers builds, config.json's quantization_config against transformers'
BitsAndBytesConfig, captions against quantize-at-load, and the failure cases. Also `imagetotext models`' weight
memory against the same oracles."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

import imagetotext
from conftest import needs_codecs
from test_cli import fake_cached_checkpoint, run_cli

bnb = pytest.importorskip("bitsandbytes")
bnb_functional = pytest.importorskip("bitsandbytes.functional")
transformers = pytest.importorskip("transformers")

NF4_KEYS = {"weight", "weight.absmax", "weight.quant_map", "weight.nested_absmax", "weight.nested_quant_map",
            "weight.quant_state.bitsandbytes__nf4"}
INT8_KEYS = {"weight", "SCB", "weight_format"}


def picture(seed=0, size=(96, 80)):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def quantized_prefixes(tensors, marker):
    """The layer prefixes ("model.fc1.") of the tensors whose names end with `marker` (".SCB", ...)."""
    return {name[:-len(marker) + 1] for name in tensors if name.endswith(marker)}


def smolvlm_linear_modules(checkpoint):
    """Every nn.Linear transformers builds for the checkpoint (the oracle of which layers exist)."""
    config = transformers.AutoConfig.from_pretrained(checkpoint)
    with torch.device("meta"):
        model = transformers.Idefics3ForConditionalGeneration(config)
    return {name: module for name, module in model.named_modules() if isinstance(module, torch.nn.Linear)}


@pytest.fixture(scope="module")
def smolvlm_nf4(tiny_smolvlm_checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("smolvlm-nf4") / "out"
    result = run_cli("quantize", str(tiny_smolvlm_checkpoint), "--to", "nf4", str(out))
    assert result.returncode == 0, result.stderr
    return out


@pytest.fixture(scope="module")
def smolvlm_int8(tiny_smolvlm_checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("smolvlm-int8") / "out"
    report = imagetotext.quantize_checkpoint(tiny_smolvlm_checkpoint, "int8", out)
    assert report["quantized_layers"] > 0 and report["bytes_after"] < report["bytes_before"]
    return out


def test_nf4_tensors_are_bitsandbytes_quantization_of_the_dense_weights(tiny_smolvlm_checkpoint, smolvlm_nf4):
    dense = load_file(str(tiny_smolvlm_checkpoint / "model.safetensors"))
    written = load_file(str(smolvlm_nf4 / "model.safetensors"))
    layers = quantized_prefixes(written, ".weight.quant_state.bitsandbytes__nf4")
    # Exactly the Linear layers transformers builds, but lm_head (bitsandbytes' default skip).
    assert layers == {name + "." for name in smolvlm_linear_modules(tiny_smolvlm_checkpoint)} - {"lm_head."}
    for prefix in layers:
        assert {key[len(prefix):] for key in written if key.startswith(prefix) and key[len(prefix):] in NF4_KEYS |
                {"bias"}} >= NF4_KEYS
        weight = dense[prefix + "weight"]
        packed, state = bnb_functional.quantize_4bit(weight, blocksize=64, compress_statistics=True, quant_type="nf4")
        expected = state.as_dict(packed=True)
        assert torch.equal(written[prefix + "weight"], packed), prefix
        assert torch.equal(written[prefix + "weight.quant_map"], expected["quant_map"])
        assert torch.equal(written[prefix + "weight.nested_absmax"], expected["nested_absmax"])
        assert torch.equal(written[prefix + "weight.nested_quant_map"], expected["nested_quant_map"])
        ours_json = json.loads(bytes(written[prefix + "weight.quant_state.bitsandbytes__nf4"].tolist()))
        theirs_json = json.loads(bytes(expected["quant_state.bitsandbytes__nf4"].tolist()))
        assert ours_json == theirs_json
        # bitsandbytes' CPU 8-bit absmax quantize is a lookup-table approximation of its CUDA binary search,
        # which ours follows (test_quantized_linear.py): a few codes differ by at most 2.
        difference = (written[prefix + "weight.absmax"].int() - expected["absmax"].int()).abs()
        assert difference.max() <= 2 and difference.count_nonzero() <= max(4, difference.numel() // 50)
    # Everything else as stored.
    for name, tensor in dense.items():
        if not any(name == prefix + "weight" for prefix in layers):
            assert torch.equal(written[name], tensor), name


def test_bitsandbytes_reads_our_nf4_layers_back(tiny_smolvlm_checkpoint, smolvlm_nf4):
    dense = load_file(str(tiny_smolvlm_checkpoint / "model.safetensors"))
    written = load_file(str(smolvlm_nf4 / "model.safetensors"))
    for prefix in sorted(quantized_prefixes(written, ".weight.quant_state.bitsandbytes__nf4"))[:4]:
        stats = {key[len(prefix) + len("weight."):]: value for key, value in written.items()
                 if key.startswith(prefix + "weight.")}
        param = bnb.nn.Params4bit.from_prequantized(data=written[prefix + "weight"], quantized_stats=stats,
                                                    device="cpu")
        restored = bnb_functional.dequantize_4bit(param.data, param.quant_state)
        weight = dense[prefix + "weight"]
        assert restored.shape == weight.shape and restored.dtype == weight.dtype
        # Within half a NF4 step of each block's absmax (the largest gap between NF4 values is 0.30).
        packed, state = bnb_functional.quantize_4bit(weight, blocksize=64, compress_statistics=True, quant_type="nf4")
        assert (restored - bnb_functional.dequantize_4bit(packed, state)).abs().max() <= 0.02 * weight.abs().max()


def test_int8_tensors_are_bitsandbytes_vectorwise_quantization(tiny_smolvlm_checkpoint, smolvlm_int8):
    dense = load_file(str(tiny_smolvlm_checkpoint / "model.safetensors"))
    written = load_file(str(smolvlm_int8 / "model.safetensors"))
    layers = quantized_prefixes(written, ".SCB")
    assert layers == {name + "." for name in smolvlm_linear_modules(tiny_smolvlm_checkpoint)} - {"lm_head."}
    for prefix in layers:
        CB, SCB, _ = bnb_functional.int8_vectorwise_quant(dense[prefix + "weight"].half())
        assert torch.equal(written[prefix + "weight"], CB) and torch.equal(written[prefix + "SCB"], SCB), prefix
        assert written[prefix + "weight_format"].item() == 0


def test_config_declares_the_quantization_as_transformers_writes_it(tiny_smolvlm_checkpoint, smolvlm_nf4, smolvlm_int8):
    source = json.loads((tiny_smolvlm_checkpoint / "config.json").read_text())
    for out, expected in [
        (smolvlm_nf4, transformers.BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.float32, llm_int8_skip_modules=["lm_head"])),
        (smolvlm_int8, transformers.BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=["lm_head"])),
    ]:
        config = json.loads((out / "config.json").read_text())
        assert config.pop("quantization_config") == expected.to_dict()
        assert config == source
        # The processor, tokenizer and generation files come along.
        for name in os.listdir(tiny_smolvlm_checkpoint):
            if not name.endswith(".safetensors") and name != "config.json":
                assert (out / name).read_bytes() == (tiny_smolvlm_checkpoint / name).read_bytes(), name


@pytest.mark.parametrize("fmt", ["nf4", "int8"])
def test_pre_quantized_smolvlm_captions_as_quantize_at_load(tiny_smolvlm_checkpoint, smolvlm_nf4, smolvlm_int8, fmt):
    out = smolvlm_nf4 if fmt == "nf4" else smolvlm_int8
    image = picture(1)
    at_load = imagetotext.load_model(tiny_smolvlm_checkpoint, device="cpu", quantization=fmt, max_new_tokens=12)
    pre = imagetotext.load_model(out, device="cpu", max_new_tokens=12)
    assert pre.quantization == fmt  # from config.json's quantization_config
    assert pre.caption(image) == at_load.caption(image)
    imagetotext.clear_cache()


def test_florence2_keeps_its_vision_tower_dense_and_captions_as_quantize_at_load(tiny_florence2_checkpoint, tmp_path):
    out = tmp_path / "florence-nf4"
    report = imagetotext.quantize_checkpoint(tiny_florence2_checkpoint, "nf4", out)
    dense = load_file(str(tiny_florence2_checkpoint / "model.safetensors"))
    written = load_file(str(out / "model.safetensors"))
    layers = quantized_prefixes(written, ".weight.quant_state.bitsandbytes__nf4")
    # The original layout's names are kept; every Linear of the language model is quantized, none of the
    # vision tower or projector (Florence-2-*-int4's policy).
    assert layers and report["quantized_layers"] == len(layers) and report["dense_layers"] > 0
    assert all(prefix.startswith("language_model.model.") for prefix in layers)
    linear_weights = {name for name, tensor in dense.items() if name.startswith("language_model.model.")
                      and tensor.dim() == 2 and "embed" not in name and not name.endswith("shared.weight")}
    assert {prefix + "weight" for prefix in layers} == linear_weights
    for prefix in layers:
        packed, _ = bnb_functional.quantize_4bit(dense[prefix + "weight"], blocksize=64, compress_statistics=True,
                                                 quant_type="nf4")
        assert torch.equal(written[prefix + "weight"], packed), prefix
    assert json.loads((out / "config.json").read_text())["quantization_config"]["llm_int8_skip_modules"] == [
        "model.vision_tower", "model.multi_modal_projector"]
    image = picture(2)
    at_load = imagetotext.load_model(tiny_florence2_checkpoint, device="cpu", quantization="nf4", max_new_tokens=8)
    pre = imagetotext.load_model(out, device="cpu", max_new_tokens=8)
    assert pre.quantization == "nf4"
    assert pre.caption(image) == at_load.caption(image)
    imagetotext.clear_cache()


def test_keep_dense_changes_what_is_quantized(tiny_smolvlm_checkpoint, tmp_path):
    report = imagetotext.quantize_checkpoint(tiny_smolvlm_checkpoint, "nf4", tmp_path / "out",
                                             keep_dense=["lm_head", "model.vision_model"])
    written = load_file(str(tmp_path / "out" / "model.safetensors"))
    layers = quantized_prefixes(written, ".weight.quant_state.bitsandbytes__nf4")
    expected = {name + "." for name in smolvlm_linear_modules(tiny_smolvlm_checkpoint)
                if name != "lm_head" and not name.startswith("model.vision_model.")}
    assert layers == expected and report["quantized_layers"] == len(expected)
    # load_model and model_selector take keep_dense too: the same layers quantized at load caption the same.
    image = picture(3)
    at_load = imagetotext.load_model(tiny_smolvlm_checkpoint, device="cpu", quantization="nf4", max_new_tokens=8,
                                     keep_dense=["lm_head", "model.vision_model"])
    assert imagetotext.load_model(tmp_path / "out", device="cpu", max_new_tokens=8).caption(image) == \
        at_load.caption(image)
    imagetotext.clear_cache()


def test_quantize_failures_are_clear(tiny_smolvlm_checkpoint, smolvlm_nf4, tmp_path):
    result = run_cli("quantize", "SmolVLM-9B", "--to", "nf4", str(tmp_path / "a"))
    assert result.returncode == 2 and "SmolVLM-9B" in result.stderr and "Traceback" not in result.stderr
    assert "SmolVLM-256M-Instruct" in result.stderr  # the valid names are listed

    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    result = run_cli("quantize", str(tiny_smolvlm_checkpoint), "--to", "nf4", str(busy))
    assert result.returncode == 2 and str(busy) in result.stderr and "not empty" in result.stderr
    assert os.listdir(busy) == ["notes.txt"]

    a_file = tmp_path / "file"
    a_file.write_text("x")
    result = run_cli("quantize", str(tiny_smolvlm_checkpoint), "--to", "int8", str(a_file / "sub"))
    assert result.returncode == 2 and str(a_file / "sub") in result.stderr and "Traceback" not in result.stderr

    result = run_cli("quantize", str(tiny_smolvlm_checkpoint), "--to", "int3", str(tmp_path / "b"))
    assert result.returncode == 2 and "--to" in result.stderr and not (tmp_path / "b").exists()

    with pytest.raises(imagetotext.InvalidArgumentError, match="already quantized"):
        imagetotext.quantize_checkpoint(smolvlm_nf4, "int8", tmp_path / "c")
    with pytest.raises(imagetotext.InvalidArgumentError, match="none"):
        imagetotext.quantize_checkpoint(tiny_smolvlm_checkpoint, "none", tmp_path / "d")
    result = run_cli("quantize", "test", "--to", "nf4", str(tmp_path / "e"))
    assert result.returncode == 2 and "test" in result.stderr


# --- imagetotext models: weight memory by the policy ---------------------------------------------------------


def bnb_bytes(weight, fmt):
    """Bytes of bitsandbytes' stored layer (what its state dict holds but the bias)."""
    if fmt == "int8":
        CB, SCB, _ = bnb_functional.int8_vectorwise_quant(weight.half())
        return CB.nbytes + SCB.nbytes
    packed, state = bnb_functional.quantize_4bit(weight, blocksize=64, compress_statistics=True, quant_type=fmt)
    return (packed.nbytes + state.absmax.nbytes + state.code.nbytes + state.state2.absmax.nbytes
            + state.state2.code.nbytes + state.offset.nbytes)


def test_models_weight_memory_follows_the_policy(tiny_smolvlm_checkpoint, tmp_path):
    tensors = load_file(str(tiny_smolvlm_checkpoint / "model.safetensors"))
    fake_cached_checkpoint(tmp_path / "hub", "HuggingFaceTB/SmolVLM-256M-Instruct", tensors)
    snapshot = next((tmp_path / "hub").glob("models--*/snapshots/*"))
    for name in os.listdir(tiny_smolvlm_checkpoint):
        if not name.endswith(".safetensors"):
            shutil.copy(tiny_smolvlm_checkpoint / name, snapshot / name)
    result = run_cli("models", "--json", env={"HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1"})
    assert result.returncode == 0, result.stderr
    rows = {row["name"]: row for row in json.loads(result.stdout)}
    assert list(rows) == imagetotext.available_models

    # The oracle: transformers' nn.Linear modules (but lm_head) in bitsandbytes' layout, every other tensor bf16.
    quantized = {name + ".weight" for name in smolvlm_linear_modules(tiny_smolvlm_checkpoint)} - {"lm_head.weight"}
    dense = sum(t.numel() * 2 for t in tensors.values())
    assert rows["SmolVLM-256M-Instruct"]["measured_weight_bytes"] == dense
    expected_int8 = dense + sum(bnb_bytes(tensors[n], "int8") - tensors[n].numel() * 2 for n in quantized)
    assert rows["SmolVLM-256M-Instruct-int8"]["measured_weight_bytes"] == expected_int8
    assert rows["Florence-2-base"]["measured_weight_bytes"] is None
    assert rows["Florence-2-base"]["measured_weights"] == "not cached"

    # The same function for NF4, and against a real load: every Linear layer's stored bytes.
    nf4 = imagetotext.weight_memory(tiny_smolvlm_checkpoint, "nf4", dtype="float32")
    assert nf4 == sum(t.numel() * 4 for t in tensors.values()) + sum(
        bnb_bytes(tensors[n], "nf4") - tensors[n].numel() * 4 for n in quantized)
    layers = imagetotext._C.linear_layers(str(tiny_smolvlm_checkpoint), "nf4")
    assert {name + ".weight" for name, fmt, _, _ in layers if fmt == "nf4"} == quantized
    table = run_cli("models", env={"HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1"})
    assert table.returncode == 0 and ("MiB" in table.stdout or "KiB" in table.stdout)

    # A registry name quantizes its cached hub checkpoint (offline here), keeping the hub's side files.
    out = tmp_path / "smolvlm-int8"
    result = run_cli("quantize", "SmolVLM-256M-Instruct", "--to", "int8", str(out),
                     env={"HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1"})
    assert result.returncode == 0, result.stderr
    written = load_file(str(out / "model.safetensors"))
    assert quantized_prefixes(written, ".SCB") == {name[:-len("weight")] for name in quantized}
    assert (out / "tokenizer.json").read_bytes() == (tiny_smolvlm_checkpoint / "tokenizer.json").read_bytes()


@pytest.mark.gpu
@pytest.mark.parametrize("fmt", ["nf4", "int8"])
def test_cuda_pre_quantized_captions_as_quantize_at_load(tiny_smolvlm_checkpoint, tmp_path, fmt):
    # CUDA loads bfloat16: a bfloat16 copy of the checkpoint, so both sides quantize the same weights (our CUDA
    # quantizers are bit-identical to the CPU ones that write the checkpoint).
    from safetensors.torch import save_file

    source = tmp_path / "bf16"
    shutil.copytree(tiny_smolvlm_checkpoint, source)
    tensors = load_file(str(source / "model.safetensors"))
    save_file({k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in tensors.items()},
              str(source / "model.safetensors"), metadata={"format": "pt"})
    imagetotext.quantize_checkpoint(source, fmt, tmp_path / "out")
    image = picture(4)
    at_load = imagetotext.load_model(source, device="cuda", quantization=fmt, max_new_tokens=12)
    pre = imagetotext.load_model(tmp_path / "out", device="cuda", max_new_tokens=12)
    assert pre.caption(image) == at_load.caption(image)
    imagetotext.clear_cache()


@needs_codecs
def test_the_cli_captions_with_a_pre_quantized_checkpoint(tiny_smolvlm_checkpoint, smolvlm_nf4, tmp_path):
    path = tmp_path / "meme.png"
    picture(5).save(path)
    result = run_cli("caption", "--model", str(smolvlm_nf4), "--device", "cpu", "--max-new-tokens", "6", "--json",
                     str(path))
    assert result.returncode == 0, result.stderr
    expected = imagetotext.load_model(tiny_smolvlm_checkpoint, device="cpu", quantization="nf4", max_new_tokens=6)
    assert json.loads(result.stdout) == {"path": str(path), "caption": expected.extract(str(path))}
    imagetotext.clear_cache()
