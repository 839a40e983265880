"""Florence-2 base/large on one GPU: ours (bf16 dense, NF4 default policy, NF4 everything) next to transformers
bf16, 3 beams as the service runs them, on random checkpoints with the exact configs (the weights' values do
not change the work; no EOS, so every run generates exactly the requested tokens).

Reports time to first token (image -> encoder -> first decoder step), ms per further token, a 64-token caption,
weight memory and peak memory (during the captions; loading's own peak in a last column). Usage (GPU machine): python benchmarks/bench_florence2.py [base|large ...]

--batch N: batch captioning throughput instead, in images per second: N different 768x768 images in one batched
generate (ours: encode + generate_batch; transformers: generate on [N, ...] inputs), next to the same N images
captioned one by one (ours), same settings (3 beams, 64 new tokens, no EOS). --profile FILE: also one caption of
ours (bf16, each size, CUDA graph decoding) under the PyTorch profiler, the kernels' GPU time written to FILE.
--tiny: a tiny random Florence-2
(64 wide, 16 new tokens) on the CPU when there is no GPU, to check that the script runs:
    python benchmarks/bench_florence2.py --tiny --batch 4
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch
import transformers

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "python"))
from test_florence2_gpu import BASE, LARGE, PROMPT  # noqa: E402
import test_florence2 as tiny  # noqa: E402

from imagetotext import _C  # noqa: E402

BEAMS = 3
TOKENS = 64


def synchronize():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(run, repeats=5):
    run()  # warm-up
    synchronize()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        synchronize()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def measure(name, load, first, full):
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    model = load()
    weights = torch.cuda.memory_allocated() - before
    load_peak = torch.cuda.max_memory_allocated() - before
    torch.cuda.reset_peak_memory_stats()  # the caption's peak, as issue 8 defines it, apart from loading's
    t1 = timed(lambda: first(model))
    t64 = timed(lambda: full(model))
    peak = torch.cuda.max_memory_allocated() - before
    print(f"| {name} | {t1 * 1e3:.1f} | {(t64 - t1) / (TOKENS - 1) * 1e3:.2f} | {t64 * 1e3:.0f} | "
          f"{weights / 2**20:.0f} | {peak / 2**20:.0f} | {load_peak / 2**20:.0f} |", flush=True)
    del model


def profile_caption(model, generate, size, out: Path):
    """One caption of `model` under the PyTorch profiler; the top kernels by GPU time appended to `out`."""
    from torch.profiler import ProfilerActivity, profile as torch_profile
    generate(model, TOKENS)  # warm-up: records the CUDA graph
    synchronize()
    with torch_profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        generate(model, TOKENS)
        synchronize()
    table = prof.key_averages().table(sort_by="device_time_total", row_limit=30)
    with out.open("a") as f:
        f.write(f"\n## imagetotext {size} bf16, one {TOKENS}-token caption ({BEAMS} beams)\n\n{table}\n")


def main(sizes, profile_out=None):
    pixel_values = torch.randn(1, 3, 768, 768, generator=torch.Generator().manual_seed(1)).cuda()
    print(f"GPU: {torch.cuda.get_device_name()}; {BEAMS} beams, {TOKENS} new tokens, no EOS")
    print("| model | first token ms | ms/token | 64-token caption ms | weights MiB | peak MiB | load peak MiB |")
    print("|---|---|---|---|---|---|---|")
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
                if profile_out is not None and label == "bf16":
                    profile_caption(_C.Florence2Model.load(directory, device="cuda", dtype="bfloat16"), ours_generate,
                                    size, profile_out)


def batch_throughput(sizes, batch, use_tiny):
    """Images per second: N images in one batched generate (ours and transformers), and ours one image at a time."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    tokens = 16 if use_tiny else TOKENS
    pixel_values = torch.cat([torch.randn(1, 3, 768, 768, generator=torch.Generator().manual_seed(1 + i))
                              for i in range(batch)]).to(device)
    where = torch.cuda.get_device_name() if device == "cuda" else "CPU"
    print(f"{where}; {str(dtype).removeprefix('torch.')}; batch of {batch} images; {BEAMS} beams, {tokens} new tokens, "
          f"no EOS; {torch.get_num_threads()} threads")
    print("| model | transformers batched img/s | ours batched img/s | ours one by one img/s |")
    print("|---|---|---|---|")
    for size in (["tiny"] if use_tiny else sizes):
        torch.manual_seed(0)
        if size == "tiny":
            config = transformers.Florence2Config(vision_config=tiny.VISION,
                                                  text_config=dict(tiny.TEXT, max_position_embeddings=1024),
                                                  image_token_id=tiny.IMAGE_TOKEN)
            image_token, prompt = tiny.IMAGE_TOKEN, tiny.PROMPT
        else:
            config = transformers.Florence2Config(**(BASE if size == "base" else LARGE), image_token_id=51289)
            image_token, prompt = 51289, PROMPT
        with tempfile.TemporaryDirectory() as directory:
            transformers.Florence2ForConditionalGeneration(config).save_pretrained(directory)
            input_ids = torch.tensor([[image_token] * 577 + prompt] * batch, device=device)
            settings = dict(num_beams=BEAMS, max_new_tokens=tokens, no_repeat_ngram_size=3, early_stopping=True)

            hf = transformers.Florence2ForConditionalGeneration.from_pretrained(directory, dtype=dtype).to(device).eval()

            def hf_batch():
                with torch.no_grad():
                    hf.generate(input_ids=input_ids, pixel_values=pixel_values.to(dtype), min_new_tokens=tokens,
                                do_sample=False, **settings)

            t_hf = timed(hf_batch, repeats=3)
            del hf
            ours = _C.Florence2Model.load(directory, device=device, dtype=str(dtype).removeprefix("torch."))
            ours_settings = dict(settings, forced_bos_token_id=0, eos_token_ids=[])

            def ours_batch():
                ours.generate_batch(ours.encode(pixel_values, input_ids[:, 577:]), **ours_settings)

            def ours_singles():
                for i in range(batch):
                    ours.generate(ours.encode(pixel_values[i:i + 1], input_ids[:1, 577:]), **ours_settings)

            t_batch, t_singles = timed(ours_batch, repeats=3), timed(ours_singles, repeats=3)
            print(f"| {size} | {batch / t_hf:.2f} | {batch / t_batch:.2f} | {batch / t_singles:.2f} |", flush=True)
            del ours


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sizes", nargs="*", default=["base", "large"], help="base, large")
    parser.add_argument("--batch", type=int, default=0, help="images per batched generate (throughput mode)")
    parser.add_argument("--tiny", action="store_true", help="a tiny random model (runs on the CPU)")
    parser.add_argument("--profile", type=Path, help="write a profile of one caption per size (ours, bf16) here")
    args = parser.parse_args()
    if args.batch > 0 or args.tiny:
        batch_throughput(args.sizes, max(args.batch, 1), args.tiny)
    else:
        if args.profile is not None:
            args.profile.write_text(f"# Florence-2 captions profiled: python {' '.join(sys.argv)}\n")
        main(args.sizes, args.profile)
