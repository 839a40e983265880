"""Where a SmolVLM decode step spends its time on the GPU: the critical path of its kernels.

One 64-token caption (bench_smolvlm.py's random full-size checkpoint and 17-tile image) runs under the PyTorch
profiler. With overlapped launches (src/ops/cuda/launch.cuh) a kernel starts before the previous one ends, so its
duration overstates what it adds to the step; what it adds is how much later it ends than the kernel before it
(end(i) - end(i - 1), kernels in the order they start). For the decode steps of the caption's second half this
prints, per kernel name: how many ran, the mean time each added (critical path), the mean duration, the mean
start relative to the previous kernel's end (negative: started early), and the total it added. Then the gaps in
which the GPU had nothing to run (the host between runs of decode steps), and the kernels of one whole step. The
heading's "with a kernel running" is a step's time less those gaps: what a change to the kernels moves.
The profiler itself slows each kernel a little: compare runs of this script, not its sums with bench_smolvlm.py.

Usage (GPU machine): python benchmarks/smolvlm_decode_trace.py [--models 256M 500M] [--quantization int8] > FILE
"""

from __future__ import annotations

import argparse
import collections
import json
import statistics
import tempfile
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

import bench_smolvlm
from imagetotext import _C

NEW_TOKENS = 64


def short_name(name: str) -> str:
    """The kernel's function and its template arguments (namespaces dropped), without its parameter list."""
    name = name.replace("void ", "").replace("(anonymous namespace)::", "")
    for prefix in ("imagetotext::ops::", "at::native::", "c10::"):
        name = name.replace(prefix, "")
    depth = 0
    for i, ch in enumerate(name):  # the parameter list: the first "(" outside the template arguments
        depth += {"<": 1, ">": -1}.get(ch, 0)
        if ch == "(" and depth == 0:
            name = name[:i]
            break
    return name[:100]


def decode_kernels(size: str, quantization: str) -> list[dict]:
    """The kernels of one caption's second half (decode steps only), in the order they started."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp)
        bench_smolvlm.write_checkpoint(path, size)
        pixels = torch.randint(0, 256, (768, 768, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
        model = _C.SmolVLM(str(path), quantization=quantization, device="cuda")
        inputs = model.process(pixels)
        caption = lambda: model.generate(inputs["input_ids"], inputs["pixel_values"], max_new_tokens=NEW_TOKENS)
        caption()
        caption()  # warm-ups: the first records the decode step's CUDA graph
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            caption()
            torch.cuda.synchronize()
        prof.export_chrome_trace(f"{tmp}/trace.json")
        events = [e for e in json.loads(Path(f"{tmp}/trace.json").read_text())["traceEvents"] if e.get("cat") == "kernel"]
    events.sort(key=lambda e: e["ts"])
    return events[len(events) // 2:]


def report(size: str, kernels: list[dict]):
    added, durations, starts = (collections.defaultdict(list) for _ in range(3))
    previous_end = None
    for kernel in kernels:
        name, end = short_name(kernel["name"]), kernel["ts"] + kernel["dur"]
        if previous_end is not None:
            added[name].append(end - previous_end)
            starts[name].append(kernel["ts"] - previous_end)
        durations[name].append(kernel["dur"])
        previous_end = end if previous_end is None else max(previous_end, end)
    span = kernels[-1]["ts"] + kernels[-1]["dur"] - kernels[0]["ts"]
    # The step's last kernel: greedy_advance's second one (or, before it, ATen's argmax).
    ends_step = [i for i, k in enumerate(kernels) if "greedy_finish" in k["name"] or "ArgMax" in k["name"]]
    steps = max(len(ends_step), 1)
    # The time some kernel ran: the span less every gap in which none did. The gaps come from the host (graph
    # launches, reading the tokens back) and vary from call to call under the profiler (57-96 us a 256M step in
    # one day's calls), so A/B comparisons of kernels read this figure.
    busy, reach = 0.0, kernels[0]["ts"]
    for kernel in kernels:
        end = kernel["ts"] + kernel["dur"]
        busy += max(0.0, end - max(reach, kernel["ts"]))
        reach = max(reach, end)
    print(f"\n## SmolVLM-{size}: {len(kernels)} kernels of {steps} decode steps over {span / 1e3:.2f} ms "
          f"({span / steps:.0f} us a step under the profiler, {busy / steps:.0f} us of it with a kernel running)\n")
    print(f"{'kernel':100s} {'count':>6s} {'adds us':>8s} {'dur us':>7s} {'start us':>9s} {'adds ms':>8s}")
    for name, values in sorted(added.items(), key=lambda item: -sum(item[1])):
        print(f"{name:100s} {len(values):6d} {statistics.mean(values):8.2f} {statistics.mean(durations[name]):7.2f} "
              f"{statistics.mean(starts[name]):9.2f} {sum(values) / 1e3:8.2f}")
    idle = [k["ts"] - p["ts"] - p["dur"] for p, k in zip(kernels, kernels[1:]) if k["ts"] - p["ts"] - p["dur"] > 3]
    print(f"\nidle gaps over 3 us: {len(idle)}, {sum(idle) / 1e3:.2f} ms in all; the largest {max(idle, default=0):.1f} us")
    if len(ends_step) >= 3:
        first, last = ends_step[-3] + 1, ends_step[-2] + 1
        origin = kernels[first]["ts"]
        print(f"\nOne step ({last - first} kernels; start and end in us from the step's first kernel's start):")
        for kernel in kernels[first:last]:
            start = kernel["ts"] - origin
            print(f"{start:8.1f} {start + kernel['dur']:8.1f}  {short_name(kernel['name'])}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["256M"], choices=sorted(bench_smolvlm.CONFIGS))
    parser.add_argument("--quantization", default="none", choices=["none", "int8", "nf4"],
                        help="of every linear layer but lm_head (activations stay bf16)")
    args = parser.parse_args()
    print(f"# SmolVLM decode steps' critical path, {torch.cuda.get_device_name()}, {NEW_TOKENS}-token caption, "
          f"bf16, quantization {args.quantization}")
    for size in args.models:
        report(size, decode_kernels(size, args.quantization))


if __name__ == "__main__":
    main()
