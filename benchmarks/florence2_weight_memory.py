"""Weight memory of Florence-2 base/large per quantization policy, from the parameter counts of transformers'
model built on the meta device (no weights needed). Dense bf16: 2 bytes per value. NF4 with double quantization
(bitsandbytes, blocksize 64, nested blocksize 256): 0.5 byte per weight + 1 byte per 64 (uint8 absmax codes)
+ 4 bytes per 64*256 (nested float32 absmax) + the 256-entry float32 code table and a float32 offset per layer."""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import transformers

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "python"))
from test_florence2_gpu import BASE, LARGE  # noqa: E402


def nf4_bytes(numel: int) -> float:
    blocks = -(-numel // 64)
    return numel / 2 + blocks + 4 * -(-blocks // 256) + 256 * 4 + 4


def report(name, spec):
    with torch.device("meta"):
        model = transformers.Florence2ForConditionalGeneration(transformers.Florence2Config(**spec))
    vision_prefixes = ("model.vision_tower.", "model.multi_modal_projector.")
    totals = {"dense": 0.0, "nf4 default": 0.0, "nf4 everything": 0.0}
    seen = set()  # tied parameters (shared, encoder/decoder embed_tokens, lm_head) count once
    for module_name, module in model.named_modules():
        for parameter_name, parameter in module.named_parameters(recurse=False):
            full = f"{module_name}.{parameter_name}"
            if id(parameter) in seen or full == "lm_head.weight":
                continue
            seen.add(id(parameter))
            dense = parameter.numel() * 2
            quantizable = isinstance(module, torch.nn.Linear) and parameter_name == "weight"
            totals["dense"] += dense
            totals["nf4 everything"] += nf4_bytes(parameter.numel()) if quantizable else dense
            in_vision = full.startswith(vision_prefixes)
            totals["nf4 default"] += nf4_bytes(parameter.numel()) if quantizable and not in_vision else dense
    print(f"| {name} ({len(seen) and sum(p.numel() for p in model.parameters()) / 1e6:.1f} M) | "
          + " | ".join(f"{v / 2**20:.0f}" for v in totals.values()) + " |")


print("| model | dense bf16 MiB | NF4, vision dense (default) MiB | NF4 everything MiB |")
print("|---|---|---|---|")
report("Florence-2-base", BASE)
report("Florence-2-large", LARGE)
