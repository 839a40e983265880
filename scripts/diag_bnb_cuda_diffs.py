"""Where our CUDA quantizers and bitsandbytes' CUDA kernels disagree (the strict xfails in
tests/python/test_quant.py): prints the differing elements with the float32 values each rule sees, so the
cause can be named. Run on the GPU machine with imagetotext and bitsandbytes importable:

    python scripts/diag_bnb_cuda_diffs.py
"""

from __future__ import annotations

import torch
import bitsandbytes.functional as bnb_functional

from imagetotext import quant


def random_weight(shape, dtype, seed=0):  # as tests/python/test_quant.py
    generator = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=generator) * 0.05).to(dtype)


def nibbles(packed):
    b = packed.reshape(-1).cpu().to(torch.int32)
    return torch.stack([b >> 4, b & 15], 1).reshape(-1)


def fp4_16bit():
    for dtype in (torch.bfloat16, torch.float16):
        for shape in ((576, 576), (1536, 576)):
            A = random_weight(shape, dtype, seed=7).cuda()
            ours, state = quant.quantize_4bit(A, 64, "fp4", False)
            theirs, _ = bnb_functional.quantize_4bit(A, blocksize=64, quant_type="fp4", compress_statistics=False)
            a, b = nibbles(ours), nibbles(theirs)
            diff = (a != b).nonzero().reshape(-1)
            x = A.reshape(-1).float().cpu()
            absmax = state.absmax.cpu()
            print(f"FP4 {dtype} {shape}: {diff.numel()} of {a.numel()} codes differ")
            for i in diff[:12].tolist():
                amax = absmax[i // 64]
                r = (1.0 / amax).float()
                s = (x[i] * r).float()
                print(f"  i={i} x={x[i].item()!r} ({x[i].view(torch.int32).item():#010x}) absmax={amax.item()!r} "
                      f"s=x*(1/absmax)={s.item()!r} s=x/absmax={(x[i] / amax).item()!r} ours={a[i].item():#06b} "
                      f"bnb={b[i].item():#06b}")


def int8_no_threshold():
    for shape in ((576, 576), (17, 1025), (64, 2560)):
        A = (random_weight(shape, torch.float16, seed=8) * 200).cuda()
        CB, SCB, _ = quant.int8_vectorwise_quant(A, 0.0)
        bCB, bSCB, _ = bnb_functional.int8_vectorwise_quant(A, 0.0)
        diff = (CB != bCB).nonzero()
        print(f"INT8 {shape}: {diff.shape[0]} of {CB.numel()} CB differ; SCB equal: {torch.equal(SCB, bSCB)}")
        x = A.float().cpu()
        for r, c in diff[:12].tolist():
            scb = SCB[r].cpu()
            print(f"  [{r},{c}] x={x[r, c].item()!r} SCB={scb.item()!r} x*(127*(1/SCB))="
                  f"{(x[r, c] * (127.0 * (1.0 / scb))).item()!r} x*(127/SCB)={(x[r, c] * (127.0 / scb)).item()!r} "
                  f"ours={CB[r, c].item()} bnb={bCB[r, c].item()}")


if __name__ == "__main__":
    fp4_16bit()
    int8_no_threshold()
