"""Florence-2 base/large on one GPU: ours (bf16 dense, NF4 default policy, NF4 everything) next to transformers
bf16, 3 beams as the service runs them, on random checkpoints with the exact configs (the weights' values do
not change the work; no EOS, so every run generates exactly the requested tokens).

Reports time to first token (image -> encoder -> first decoder step), ms per further token, a 64-token caption,
weight memory and peak memory. Usage (GPU machine): python benchmarks/bench_florence2.py [base|large ...]
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import torch
import transformers

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "python"))
from test_florence2_gpu import BASE, LARGE, PROMPT  # noqa: E402

from imagetotext import _C  # noqa: E402

BEAMS = 3
TOKENS = 64


def timed(run, repeats=5):
    run()  # warm-up
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def measure(name, load, first, full):
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    model = load()
    weights = torch.cuda.memory_allocated() - before
    t1 = timed(lambda: first(model))
    t64 = timed(lambda: full(model))
    peak = torch.cuda.max_memory_allocated() - before
    print(f"| {name} | {t1 * 1e3:.1f} | {(t64 - t1) / (TOKENS - 1) * 1e3:.2f} | {t64 * 1e3:.0f} | "
          f"{weights / 2**20:.0f} | {peak / 2**20:.0f} |", flush=True)
    del model


def main(sizes):
    pixel_values = torch.randn(1, 3, 768, 768, generator=torch.Generator().manual_seed(1)).cuda()
    print(f"GPU: {torch.cuda.get_device_name()}; {BEAMS} beams, {TOKENS} new tokens, no EOS")
    print("| model | first token ms | ms/token | 64-token caption ms | weights MiB | peak MiB |")
    print("|---|---|---|---|---|---|")
    for size in sizes:
        torch.manual_seed(0)
        config = transformers.Florence2Config(**(BASE if size == "base" else LARGE), image_token_id=51289)
        with tempfile.TemporaryDirectory() as directory:
            transformers.Florence2ForConditionalGeneration(config).save_pretrained(directory)
            input_ids = torch.tensor([[51289] * 577 + PROMPT], device="cuda")

            def hf_load():
                return transformers.Florence2ForConditionalGeneration.from_pretrained(
                    directory, dtype=torch.bfloat16).cuda().eval()

            def hf_generate(model, tokens):
                with torch.no_grad():
                    model.generate(input_ids=input_ids, pixel_values=pixel_values.bfloat16(), num_beams=BEAMS,
                                   max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False,
                                   no_repeat_ngram_size=3, early_stopping=True)

            measure(f"transformers {size} bf16", hf_load, lambda m: hf_generate(m, 1), lambda m: hf_generate(m, TOKENS))
            # decoding "auto" replays the decoder + beam search step as one CUDA graph; "eager" launches each step.
            for label, kwargs, decoding in [("bf16 eager", {}, "eager"), ("bf16", {}, "auto"),
                                            ("nf4 (vision dense)", {"quantization": "nf4"}, "auto"),
                                            ("nf4 (everything)", {"quantization": "nf4", "quantize_vision": True},
                                             "auto")]:
                def ours_generate(model, tokens, decoding=decoding):
                    encoded = model.encode(pixel_values, input_ids[:, 577:])
                    model.generate(encoded, max_new_tokens=tokens, num_beams=BEAMS, no_repeat_ngram_size=3,
                                   forced_bos_token_id=0, early_stopping=True, eos_token_ids=[], decoding=decoding)

                measure(f"imagetotext {size} {label}",
                        lambda: _C.Florence2Model.load(directory, device="cuda", dtype="bfloat16", **kwargs),
                        lambda m: ours_generate(m, 1), lambda m: ours_generate(m, TOKENS))


if __name__ == "__main__":
    main(sys.argv[1:] or ["base", "large"])
