"""CPU matmul speed for small M: the fused NF4 and INT8 kernels against dequantize-then-matmul and against
a dense float32 torch.matmul of the same shape.

    PYTHONPATH=python python benchmarks/bench_quant_cpu.py [--out benchmarks/results/quant-cpu-DATE.txt]

Median of many timed calls after a warm-up, torch.set_num_threads(2). Times in microseconds per call.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import subprocess
import sys
import time

import torch

from imagetotext import quant

SHAPES = [(576, 576), (1536, 576), (960, 2560), (4096, 4096)]  # [out_features, in_features]
ROWS = [1, 4, 16]


def median_us(fn, min_seconds=0.3, min_calls=20):
    for _ in range(5):
        fn()
    times = []
    start = time.perf_counter()
    while len(times) < min_calls or time.perf_counter() - start < min_seconds:
        t0 = time.perf_counter_ns()
        fn()
        times.append(time.perf_counter_ns() - t0)
    return statistics.median(times) / 1000.0


def cpu_model():
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    return platform.processor() or "unknown"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", help="also write the table to this file")
    args = parser.parse_args()
    torch.set_num_threads(2)
    torch.manual_seed(0)

    lines = [
        f"command: {' '.join([os.path.basename(sys.executable)] + sys.argv)}",
        f"cpu: {cpu_model()}; torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"IMAGETOTEXT_CPU_SIMD={os.environ.get('IMAGETOTEXT_CPU_SIMD', '(unset: widest the CPU has)')}",
        f"date: {datetime.date.today().isoformat()}",
        "",
        "times in us per call (median); 'dq+mm' = dequantize to float32 then torch.matmul; fused < both = target met",
        "",
        f"{'N x K':>11} {'M':>3} | {'fp32 mm':>9} | {'NF4 fused':>9} {'NF4 dq+mm':>9} | "
        f"{'INT8 fused':>10} {'INT8 dq+mm':>10} | target",
    ]
    for N, K in SHAPES:
        W = torch.randn(N, K) * 0.05
        packed, state = quant.quantize_4bit(W, 64, "nf4", compress_statistics=True)
        layer_nf4 = quant.QuantizedLinear.from_dense(W, None, "nf4")
        absmax = layer_absmax = None
        absmax = quant.dequantize_blockwise(state.absmax, state.state2.absmax, state.state2.code, 256) + state.offset
        CB, SCB, _ = quant.int8_vectorwise_quant(W.half())
        del layer_nf4, layer_absmax
        for M in ROWS:
            A = torch.randn(M, K)
            Wt = W.t().contiguous().t()
            dense = median_us(lambda: torch.matmul(A, Wt.t()))
            nf4_fused = median_us(
                lambda: torch.ops.imagetotext.gemm_4bit(A, packed, absmax, 64, "nf4", [N, K], None))
            nf4_dq = median_us(lambda: torch.matmul(
                A, torch.ops.imagetotext.dequantize_4bit(packed, absmax, 64, "nf4", [N, K], torch.float32).t()))
            int8_fused = median_us(lambda: torch.ops.imagetotext.gemm_int8_weight_only(A, CB, SCB, None))
            int8_dq = median_us(lambda: torch.matmul(A, torch.ops.imagetotext.int8_vectorwise_dequant(CB, SCB).t()))
            met = []
            met.append("NF4 ok" if nf4_fused < min(dense, nf4_dq) else "NF4 MISSED")
            met.append("INT8 ok" if int8_fused < min(dense, int8_dq) else "INT8 MISSED")
            lines.append(f"{N:>5}x{K:<5} {M:>3} | {dense:>9.1f} | {nf4_fused:>9.1f} {nf4_dq:>9.1f} | "
                         f"{int8_fused:>10.1f} {int8_dq:>10.1f} | {', '.join(met)}")
            print(lines[-1], flush=True)
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
