"""GPU time of a caption's image side by kernel, on random full-size checkpoints, bf16, under the PyTorch profiler,
averaged over 5 calls after 3 warm-ups, per kernel name (the 12 largest) and in total:
- florence2-base / florence2-large: `image_features` (the DaViT tower and the projector) of one 768 x 768 image;
- smolvlm-256M / smolvlm-500M: `prompt_logits` of bench_smolvlm.py's image and prompt (the 17-tile vision tower,
  the connector and the prompt's prefill), i.e. what precedes the first token; `smolvlm-256M-int8` and
  `smolvlm-256M-nf4` (500M likewise) quantize every linear layer but lm_head, as the hub's variants do.
The sum of kernel times, unlike a wall-clock figure, hardly moves with the machine's load, so two trees compare in
one call.

Usage (GPU machine): python benchmarks/image_side_kernels.py [florence2-base florence2-large smolvlm-256M ...]
"""

from __future__ import annotations

import argparse
import collections
import sys
import tempfile
from pathlib import Path

import torch
import transformers
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "python"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_smolvlm import write_checkpoint  # noqa: E402
from test_florence2_gpu import BASE, LARGE  # noqa: E402

from imagetotext import _C  # noqa: E402

CALLS = 5


def image_side(name: str, directory: str):
    """The model saved in `directory` and its image-side call, ready to run."""
    torch.manual_seed(0)
    if name.startswith("florence2-"):
        config = transformers.Florence2Config(**(BASE if name == "florence2-base" else LARGE), image_token_id=51289)
        transformers.Florence2ForConditionalGeneration(config).save_pretrained(directory)
        model = _C.Florence2Model.load(directory, device="cuda", dtype="bfloat16")
        pixel_values = torch.randn(1, 3, 768, 768, generator=torch.Generator().manual_seed(1)).cuda()
        return lambda: model.image_features(pixel_values)
    size, _, quantization = name.removeprefix("smolvlm-").partition("-")
    write_checkpoint(Path(directory), size)
    model = _C.SmolVLM(directory, quantization=quantization or "none", device="cuda")
    pixels = torch.randint(0, 256, (768, 768, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    inputs = model.process(pixels)
    return lambda: model.prompt_logits(inputs["input_ids"], inputs["pixel_values"])


def main(names):
    print(f"GPU: {torch.cuda.get_device_name()}; bf16 activations, mean of {CALLS} calls")
    for name in names:
        with tempfile.TemporaryDirectory() as directory:
            run = image_side(name, directory)
            for _ in range(3):
                run()
            torch.cuda.synchronize()
            with profile(activities=[ProfilerActivity.CUDA]) as prof:
                for _ in range(CALLS):
                    run()
                torch.cuda.synchronize()
        time_by_kernel, calls_by_kernel = collections.Counter(), collections.Counter()
        for event in prof.events():
            if event.device_type == torch.autograd.DeviceType.CUDA:
                time_by_kernel[event.name[:80]] += event.device_time_total / CALLS
                calls_by_kernel[event.name[:80]] += 1 / CALLS
        total_ms = sum(time_by_kernel.values()) / 1000
        print(f"\n## {name}: {sum(calls_by_kernel.values()):.0f} kernels, GPU time {total_ms:.2f} ms")
        for kernel, microseconds in time_by_kernel.most_common(12):
            print(f"  {microseconds / 1000:7.3f} ms {calls_by_kernel[kernel]:5.0f}x {kernel}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="*", default=["florence2-base", "florence2-large", "smolvlm-256M"],
                        choices=["florence2-base", "florence2-large"] + [
                            f"smolvlm-{size}{variant}" for size in ("256M", "500M") for variant in ("", "-int8", "-nf4")])
    main(parser.parse_args().models)
