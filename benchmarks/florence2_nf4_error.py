"""The error each Florence-2 quantization policy adds, against the dense model, on the tiny random checkpoint of
tests/python/test_florence2.py (CPU, fp32): per stage (image tokens, encoder output, logits) and per Linear layer
group (relative Frobenius error of the NF4 weights). Usage: PYTHONPATH=python python benchmarks/florence2_nf4_error.py"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "python"))
import test_florence2 as t  # noqa: E402

from imagetotext import _C, quant  # noqa: E402


def rel(a, b):
    return ((a.double() - b.double()).abs().max() / b.double().abs().max()).item()


def main():
    model = t.random_model()
    pixel_values = torch.randn(1, 3, t.IMAGE_SIZE, t.IMAGE_SIZE, generator=torch.Generator().manual_seed(7))
    prompt = torch.tensor([t.PROMPT])
    decoder_ids = torch.tensor([[2, 0, 17, 42, 9, 88, 3]])
    with tempfile.TemporaryDirectory() as directory:
        model.save_pretrained(directory)
        dense = _C.Florence2Model.load(directory)
        stages = {}
        for policy, kwargs in [("nf4, vision dense (default)", {}), ("nf4 everything", {"quantize_vision": True})]:
            ours = _C.Florence2Model.load(directory, quantization="nf4", **kwargs)
            stages[policy] = (rel(ours.image_features(pixel_values), dense.image_features(pixel_values)),
                              rel(ours.encode(pixel_values, prompt), dense.encode(pixel_values, prompt)),
                              rel(ours.decoder_logits(ours.encode(pixel_values, prompt), decoder_ids),
                                  dense.decoder_logits(dense.encode(pixel_values, prompt), decoder_ids)))
    print("| policy | image tokens | encoder output | logits |  (max abs error / max abs value)")
    print("|---|---|---|---|")
    for policy, errors in stages.items():
        print(f"| {policy} | " + " | ".join(f"{e:.3g}" for e in errors) + " |")
    groups = {}
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and name != "lm_head":
            w = module.weight.detach()
            q = quant.QuantizedLinear.from_dense(w, None, "nf4", compress_statistics=True).dequantized_weight()
            group = "vision tower" if "vision_tower" in name else "projector" if "projector" in name else \
                "BART encoder" if ".encoder." in name else "BART decoder"
            groups.setdefault(group, []).append(((q - w).norm() / w.norm()).item())
    print("\n| layer group | layers | NF4 weight error (relative Frobenius), mean / max |")
    print("|---|---|---|")
    for group, errors in groups.items():
        print(f"| {group} | {len(errors)} | {sum(errors) / len(errors):.4f} / {max(errors):.4f} |")


if __name__ == "__main__":
    main()
