"""How much of SmolVLM's first token is the GPU waiting for the host: wall time against GPU busy time.

For bench_smolvlm.py's random full-size checkpoint and 17-tile image (bf16): the processor, a 64-token caption from
uint8 pixels, then `image_features`, `prompt_logits` and a one-token `generate`, each timed (median of 10 calls) and
profiled once: kernels, the span from the first kernel's start to the last one's end, the union of kernel
intervals (GPU busy), the rest of the span (GPU idle, i.e. waiting on launches or the host), and the span of the
host's launch calls; plus the call's peak memory above what was allocated before it. The profiler slows the host,
so compare its spans between runs of this script, and the wall times with bench_smolvlm.py.

Usage (GPU machine): python benchmarks/first_token_idle.py [256M 500M]
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

import bench_smolvlm
from imagetotext import _C


def median_ms(fn, calls=10):
    fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def profiled(fn, tmp):
    """(kernels, span ms, busy ms, host launch span ms) of one call."""
    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    prof.export_chrome_trace(f"{tmp}/trace.json")
    events = json.loads(Path(f"{tmp}/trace.json").read_text())["traceEvents"]
    kernels = sorted((e["ts"], e["ts"] + e["dur"]) for e in events if e.get("cat") == "kernel")
    launches = sorted(e["ts"] for e in events if e.get("cat") == "cuda_runtime" and "Launch" in e.get("name", ""))
    busy, covered_to = 0.0, float("-inf")
    for start, end in kernels:
        if end > covered_to:
            busy += end - max(start, covered_to)
            covered_to = end
    span = kernels[-1][1] - kernels[0][0]
    return len(kernels), span / 1e3, busy / 1e3, (launches[-1] - launches[0]) / 1e3 if launches else 0.0


def main(sizes):
    print(f"# SmolVLM first token, wall against GPU busy time, {torch.cuda.get_device_name()}, bf16")
    with tempfile.TemporaryDirectory() as tmp:
        for size in sizes:
            path = Path(tmp) / size
            bench_smolvlm.write_checkpoint(path, size)
            pixels = torch.randint(0, 256, (768, 768, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
            model = _C.SmolVLM(str(path), device="cuda")
            inputs = model.process(pixels)
            ids, pixel_values = inputs["input_ids"], inputs["pixel_values"]
            print(f"\n## {size}: process {median_ms(lambda: model.process(pixels)):.2f} ms, 64-token caption from "
                  f"uint8 pixels {median_ms(lambda: model.caption(pixels, max_new_tokens=64), 5):.2f} ms")
            for name, fn in [("image_features", lambda: model.image_features(pixel_values)),
                             ("prompt_logits", lambda: model.prompt_logits(ids, pixel_values)),
                             ("generate 1 token", lambda: model.generate(ids, pixel_values, max_new_tokens=1))]:
                wall = median_ms(fn)
                kernels, span, busy, launch_span = profiled(fn, tmp)
                torch.cuda.synchronize()
                before = torch.cuda.memory_allocated()
                torch.cuda.reset_peak_memory_stats()
                fn()
                torch.cuda.synchronize()
                peak = (torch.cuda.max_memory_allocated() - before) / 2**20
                print(f"  {name:16s} wall {wall:6.2f} ms, peak +{peak:.0f} MiB | profiled: {kernels} kernels, span "
                      f"{span:.2f} ms, GPU busy {busy:.2f}, idle {span - busy:.2f}, host launches over {launch_span:.2f}")
            del model


if __name__ == "__main__":
    main(sys.argv[1:] or ["256M"])
