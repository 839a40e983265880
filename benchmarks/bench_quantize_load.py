"""Load time of a pre-quantized checkpoint (`imagetotext quantize`) against quantizing at load time, on the CPU,
for full-size random SmolVLM-256M and Florence-2-base checkpoints stored in bfloat16 as the hub's are (the
configs of bench_smolvlm.py and test_florence2_gpu.py; the weights' values do not change the work).

Each load is load_model(...).download() in a fresh model cache (the safetensors file is in the page cache
after a warm-up load), median of --repeat runs. Writes a Markdown table:

    python benchmarks/bench_quantize_load.py --out benchmarks/results/quantize-load-cpu-DATE.md
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import transformers
from safetensors.torch import load_file, save_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "python"))
import imagetotext  # noqa: E402
from bench_smolvlm import write_checkpoint as write_smolvlm  # noqa: E402
from test_florence2_gpu import BASE  # noqa: E402
from test_florence2_processor import write_tokenizer  # noqa: E402


def to_bfloat16(directory: Path) -> None:
    """Store the checkpoint's floating tensors in bfloat16, as the published checkpoints are."""
    path = directory / "model.safetensors"
    tensors = {name: t.to(torch.bfloat16) if t.is_floating_point() else t for name, t in load_file(str(path)).items()}
    save_file(tensors, str(path), metadata={"format": "pt"})
    config = json.loads((directory / "config.json").read_text())
    config["torch_dtype"] = "bfloat16"
    (directory / "config.json").write_text(json.dumps(config, indent=2))


def write_florence2(directory: Path) -> None:
    torch.manual_seed(0)
    config = transformers.Florence2Config(**BASE, image_token_id=51289)
    transformers.Florence2ForConditionalGeneration(config).save_pretrained(directory)
    write_tokenizer(directory / "tokenizer.json")


def load_seconds(checkpoint: Path, repeat: int, **options) -> float:
    times = []
    for _ in range(repeat + 1):  # the first run warms the page cache
        imagetotext.clear_cache()
        start = time.perf_counter()
        imagetotext.load_model(checkpoint, device="cpu", **options).download()
        times.append(time.perf_counter() - start)
    imagetotext.clear_cache()
    return statistics.median(times[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--models", nargs="+", default=["SmolVLM-256M", "Florence-2-base"])
    args = parser.parse_args()

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            dense = Path(tmp) / name
            dense.mkdir()
            if name == "SmolVLM-256M":
                write_smolvlm(dense, "256M")
            else:
                write_florence2(dense)
            to_bfloat16(dense)
            dense_mib = (dense / "model.safetensors").stat().st_size / 2**20
            for fmt in ("nf4", "int8"):
                out = Path(tmp) / f"{name}-{fmt}"
                start = time.perf_counter()
                report = imagetotext.quantize_checkpoint(dense, fmt, out)
                quantize_s = time.perf_counter() - start
                at_load = load_seconds(dense, args.repeat, quantization=fmt)
                pre = load_seconds(out, args.repeat)
                rows.append((name, fmt, report["quantized_layers"], dense_mib,
                             (out / "model.safetensors").stat().st_size / 2**20, quantize_s, at_load, pre))
                print(rows[-1], flush=True)

    lines = [
        "# Load time: pre-quantized checkpoint vs quantize at load (CPU)",
        "",
        f"Command: `python benchmarks/bench_quantize_load.py --out {args.out}` (repeat {args.repeat}, median).",
        f"Machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, "
        f"torch {torch.__version__}. Random full-size checkpoints in bfloat16 (SmolVLM-256M: bench_smolvlm.py's "
        "config; Florence-2-base: test_florence2_gpu.BASE); load = load_model(dir, device='cpu').download() "
        "(float32 on the CPU), page cache warm.",
        "",
        "| model | format | layers quantized | dense file MiB | quantized file MiB | quantize s | load, quantize at "
        "load s | load, pre-quantized s | speed-up |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, fmt, layers, dense_mib, out_mib, quantize_s, at_load, pre in rows:
        lines.append(f"| {name} | {fmt} | {layers} | {dense_mib:,.0f} | {out_mib:,.0f} | {quantize_s:.2f} | "
                     f"{at_load:.2f} | {pre:.2f} | {at_load / pre:.1f}x |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
