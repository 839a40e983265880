"""Issue 8's CPU table: SmolVLM-256M-int8 (weight-only INT8) and Florence-2-base-int4 (NF4) against transformers
fp32 on this CPU, on a tiny and on a full-size random checkpoint (real configs, random weights, as
bench_smolvlm.py / bench_florence2.py build them; no hub access).

Each side runs in its own subprocess (so its VmHWM is that side's peak resident memory, loading included) on
the same inputs (transformers' processor output for SmolVLM: a 768x768 image, 17 tiles, 1127 prompt tokens at
full size; a random 768x768 pixel_values and the <DETAILED_CAPTION> prompt for Florence-2), and generates
exactly --tokens new tokens: SmolVLM greedy with end-of-utterance kept from winning (its lm_head row zeroed)
and min_new_tokens on the transformers side; Florence-2 with the service's 3 beams and no_repeat_ngram_size 3,
no EOS on our side and min_new_tokens on transformers'.

Timings per side: time to first token (image in, first token's logits out), ms per further token, the whole
caption; the median of --repeats runs (after one warm-up caption for the tiny models). transformers' first-token
and per-token times come from one generate() call (a logits processor stamps each step). Ours: first token from
generate(1 token); per token from a probe that isolates decoding (Florence-2: the decoder alone on one encoder
output, 1 vs N tokens; SmolVLM: the same prompt length with one image tile, 1 vs N tokens). --profile adds our time split by stage (vision, connector/projector + encoder, prefill,
decode per token) and torch.profiler's top ATen ops.

    PYTHONPATH=python python benchmarks/bench_cpu.py --out benchmarks/results/cpu-DATE.md [--sizes tiny full]
        [--models smolvlm florence2] [--tokens 32] [--profile]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
SMOLVLM_SPECIALS_EOS = 49279  # <end_of_utterance> in bench_smolvlm's tokenizer


# ---- checkpoints and inputs (parent process) --------------------------------------------------------------------

def smolvlm_checkpoint(path: Path, size: str) -> None:
    import transformers
    from PIL import Image

    sys.path.insert(0, str(HERE))
    if size == "full":
        import bench_smolvlm
        processor = bench_smolvlm.write_checkpoint(path, "256M")
        image = torch.randint(0, 256, (768, 768, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    else:
        sys.path.insert(0, str(HERE.parent / "tests" / "python"))
        import test_smolvlm
        _, processor = test_smolvlm.write_checkpoint(path)
        image = torch.randint(0, 256, (40, 70, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    chat = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Can you describe this image?"}]}]
    prompt = processor.apply_chat_template(chat, add_generation_prompt=True)
    inputs = processor(text=prompt, images=[Image.fromarray(image.numpy())], return_tensors="pt")
    torch.save({"input_ids": inputs["input_ids"], "pixel_values": inputs["pixel_values"],
                "pixel_attention_mask": inputs["pixel_attention_mask"]}, path / "inputs.pt")
    del transformers


def florence2_checkpoint(path: Path, size: str) -> None:
    import transformers

    sys.path.insert(0, str(HERE.parent / "tests" / "python"))
    torch.manual_seed(0)
    if size == "full":
        from test_florence2_gpu import BASE, PROMPT
        config = transformers.Florence2Config(**BASE, image_token_id=51289)
        model = transformers.Florence2ForConditionalGeneration(config).eval()
        image_tokens, image_token, side = 577, 51289, 768
    else:
        import test_florence2
        model = test_florence2.random_model()
        image_tokens, image_token, side = test_florence2.IMAGE_TOKENS, test_florence2.IMAGE_TOKEN, test_florence2.IMAGE_SIZE
        PROMPT = test_florence2.PROMPT
    model.save_pretrained(path)
    pixel_values = torch.randn(1, 3, side, side, generator=torch.Generator().manual_seed(1))
    torch.save({"input_ids": torch.tensor([[image_token] * image_tokens + PROMPT]), "pixel_values": pixel_values,
                "image_tokens": image_tokens}, path / "inputs.pt")


# ---- one side, in its own process ---------------------------------------------------------------------------------

def timed(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def rss_mib(field: str) -> float:
    """VmRSS (now) or VmHWM (peak) of this process. Not ru_maxrss: Linux carries it over from the forking parent
    (which built the checkpoint) across exec, so it would report the parent's peak."""
    with open("/proc/self/status") as f:
        line = next(line for line in f if line.startswith(field + ":"))
    return int(line.split()[1]) / 1024


def process_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class StepClock:
    """A transformers logits processor that changes nothing and stamps the time of every decoding step."""

    def __init__(self):
        self.stamps: list[float] = []

    def __call__(self, input_ids, scores):
        self.stamps.append(time.perf_counter())
        return scores


def transformers_side(spec: dict) -> dict:
    import transformers

    path, tokens, repeats = Path(spec["path"]), spec["tokens"], spec["repeats"]
    inputs = torch.load(path / "inputs.pt")
    dtype = getattr(torch, spec["dtype"])
    start = time.perf_counter()
    if spec["model"] == "smolvlm":
        extra = {}
        if spec.get("bnb8"):
            extra["quantization_config"] = transformers.BitsAndBytesConfig(load_in_8bit=True, llm_int8_threshold=6.0)
        model = transformers.Idefics3ForConditionalGeneration.from_pretrained(
            path, dtype=dtype, attn_implementation="eager", **extra).eval()
        kwargs = dict(input_ids=inputs["input_ids"], pixel_values=inputs["pixel_values"].to(dtype),
                      pixel_attention_mask=inputs["pixel_attention_mask"], do_sample=False)
    else:
        model = transformers.Florence2ForConditionalGeneration.from_pretrained(path, dtype=dtype).eval()
        kwargs = dict(input_ids=inputs["input_ids"], pixel_values=inputs["pixel_values"].to(dtype), num_beams=3,
                      no_repeat_ngram_size=3, early_stopping=True, do_sample=False)
    load_s = time.perf_counter() - start
    loaded_rss = rss_mib("VmRSS")

    runs = []

    def caption():
        clock = StepClock()
        begin = time.perf_counter()
        with torch.no_grad():
            out = model.generate(**kwargs, max_new_tokens=tokens, min_new_tokens=tokens,
                                 logits_processor=transformers.LogitsProcessorList([clock]))
        end = time.perf_counter()
        runs.append((clock.stamps[0] - begin, (clock.stamps[-1] - clock.stamps[0]) / max(len(clock.stamps) - 1, 1),
                     end - begin, len(clock.stamps)))
        return out

    if spec["warmup"]:
        caption()
        runs.clear()
    cpu_start = process_cpu_s()
    for _ in range(repeats):
        caption()
    steps = {r[3] for r in runs}
    assert steps == {tokens}, f"transformers ran {steps} steps, not {tokens}"
    return {"ttft_s": statistics.median(r[0] for r in runs), "per_token_s": statistics.median(r[1] for r in runs),
            "caption_s": statistics.median(r[2] for r in runs), "load_s": load_s, "loaded_rss_mib": loaded_rss,
            "cpu_s": (process_cpu_s() - cpu_start) / repeats}


def ours_side(spec: dict) -> dict:
    from imagetotext import _C

    path, tokens, repeats = Path(spec["path"]), spec["tokens"], spec["repeats"]
    inputs = torch.load(path / "inputs.pt")
    start = time.perf_counter()
    if spec["model"] == "smolvlm":
        model = _C.SmolVLM(str(path), quantization=spec["quantization"], device="cpu", dtype=spec["dtype"])
        ids, pixels, mask = inputs["input_ids"], inputs["pixel_values"], inputs["pixel_attention_mask"]

        def generate(n, ids=ids, pixels=pixels, mask=mask):
            out, _ = model.generate(ids, pixels, mask, max_new_tokens=n)
            assert len(out) == n, f"generated {len(out)} tokens, not {n}"

        # Per token from a probe of the same prompt length with one tile (the other tiles' <image> tokens become
        # text): the difference of two whole captions would carry the long vision pass's run-to-run noise.
        image = ids == model_image_token(path)
        per_tile = int(image.sum()) // pixels.shape[1]
        probe_ids = ids.masked_fill(image & (image.cumsum(1) > per_tile), int(ids[0, 0]))
        probe = lambda n: generate(n, probe_ids, pixels[:, :1], mask[:, :1])  # noqa: E731
    else:
        model = _C.Florence2Model.load(str(path), device="cpu", dtype=spec["dtype"],
                                       quantization=spec["quantization"])
        pixels, prompt = inputs["pixel_values"], inputs["input_ids"][:, inputs["image_tokens"]:]

        def decode(encoded, n):
            model.generate(encoded, max_new_tokens=n, num_beams=3, no_repeat_ngram_size=3, forced_bos_token_id=0,
                           early_stopping=True, eos_token_ids=[])

        def generate(n):
            decode(model.encode(pixels, prompt), n)

        encoded = model.encode(pixels, prompt)
        probe = lambda n: decode(encoded, n)  # noqa: E731  per token: the decoder alone on one encoder output
    load_s = time.perf_counter() - start
    loaded_rss = rss_mib("VmRSS")

    if spec["warmup"]:
        generate(tokens)
    ttft = timed(lambda: generate(1), repeats)
    cpu_start = process_cpu_s()
    total = timed(lambda: generate(tokens), repeats)
    cpu_s = (process_cpu_s() - cpu_start) / repeats
    per_token = (timed(lambda: probe(tokens), repeats) - timed(lambda: probe(1), repeats)) / (tokens - 1)
    result = {"ttft_s": ttft, "per_token_s": per_token, "caption_s": total, "load_s": load_s,
              "loaded_rss_mib": loaded_rss, "cpu_s": cpu_s}
    if spec.get("profile"):
        from torch.profiler import ProfilerActivity, profile
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            generate(tokens)
        result["stages"] = stage_split(spec, model, inputs, ttft, result["per_token_s"], prof)
    return result


def model_image_token(path: Path) -> int:
    return json.loads((path / "config.json").read_text())["image_token_id"]


def stage_split(spec, model, inputs, ttft, per_token, prof) -> dict:
    """Our time by stage: the image stages timed on their own, the prompt's text pass as the rest of the first
    token's time, and torch.profiler's top ops over one more caption (after the timed ones: the profiler's own
    cost stays out of the table)."""
    stages = {}
    if spec["model"] == "smolvlm":
        pixels = inputs["pixel_values"][0].to(getattr(torch, spec["dtype"]))
        start = time.perf_counter()
        hidden = model.vision(pixels)
        stages["vision tower"] = time.perf_counter() - start
        stages["connector"] = timed(lambda: model.connector(hidden), 1)
        stages["text prefill + first token"] = ttft - stages["vision tower"] - stages["connector"]
    else:
        pixels, prompt = inputs["pixel_values"], inputs["input_ids"][:, inputs["image_tokens"]:]
        stages["vision tower + projector"] = timed(lambda: model.image_features(pixels), 1)
        stages["encoder"] = timed(lambda: model.encode(pixels, prompt), 1) - stages["vision tower + projector"]
        stages["first decoder step (3 beams)"] = ttft - stages["vision tower + projector"] - stages["encoder"]
    stages["decode, per further token"] = per_token
    ops = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    whole = sum(e.self_cpu_time_total for e in ops)
    stages["top ops"] = [(e.key, e.count, e.self_cpu_time_total / 1e3, 100 * e.self_cpu_time_total / whole)
                         for e in ops[:12]]
    return stages


def worker(spec: dict) -> None:
    torch.manual_seed(0)
    result = transformers_side(spec) if spec["side"] == "transformers" else ours_side(spec)
    result["peak_rss_mib"] = rss_mib("VmHWM")
    result["threads"] = torch.get_num_threads()
    print("RESULT " + json.dumps(result), flush=True)


# ---- the table (parent process) -----------------------------------------------------------------------------------

VARIANTS = {
    "smolvlm": [("transformers fp32 (eager)", {"side": "transformers", "dtype": "float32"}),
                ("ours int8, fp32 activations", {"side": "ours", "quantization": "int8", "dtype": "float32"}),
                ("ours int8, bf16 activations", {"side": "ours", "quantization": "int8", "dtype": "bfloat16"})],
    "florence2": [("transformers fp32", {"side": "transformers", "dtype": "float32"}),
                  ("ours nf4, fp32 activations", {"side": "ours", "quantization": "nf4", "dtype": "float32"}),
                  ("ours nf4, bf16 activations", {"side": "ours", "quantization": "nf4", "dtype": "bfloat16"})],
}
NAMES = {("smolvlm", "full"): "SmolVLM-256M", ("smolvlm", "tiny"): "SmolVLM tiny",
         ("florence2", "full"): "Florence-2-base", ("florence2", "tiny"): "Florence-2 tiny"}


def run_side(spec: dict) -> dict:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(HERE.parent / "python"), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, __file__, "--worker", json.dumps(spec)], capture_output=True, text=True,
                          env=env)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        sys.stderr.write(proc.stdout[-3000:] + proc.stderr[-3000:])
        return {"error": (proc.stderr.strip().splitlines() or ["no output"])[-1][:200]}
    return json.loads(lines[-1][len("RESULT "):])


def machine() -> str:
    model = next((line.split(":", 1)[1].strip() for line in subprocess.run(["lscpu"], capture_output=True, text=True)
                  .stdout.splitlines() if line.startswith("Model name")), platform.processor())
    flags = open("/proc/cpuinfo").read()
    isa = ", ".join(f for f in ["avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16"] if f" {f}" in flags)
    return (f"{model}, {os.cpu_count()} cores ({isa}); torch {torch.__version__}, {torch.get_num_threads()} threads; "
            f"{subprocess.run(['uptime'], capture_output=True, text=True).stdout.strip()}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--models", nargs="+", default=["smolvlm", "florence2"], choices=sorted(VARIANTS))
    parser.add_argument("--sizes", nargs="+", default=["tiny", "full"], choices=["tiny", "full"])
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=0, help="timed runs per side (default: 5 tiny, 1 full)")
    parser.add_argument("--variants", nargs="+", help="only the sides whose label contains one of these (e.g. transformers, 'int8, bf16')")
    parser.add_argument("--warmup", action="store_true", help="one warm-up caption per side at full size too")
    parser.add_argument("--profile", action="store_true", help="our time by stage and the top ATen ops (bf16 rows)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if args.worker:
        return worker(json.loads(args.worker))

    lines = ["# CPU: ours against transformers fp32", "",
             "`" + " ".join(["python", "benchmarks/bench_cpu.py"] + sys.argv[1:]) + "`", "",
             f"Machine: {machine()}", "",
             f"{args.tokens} new tokens per caption (forced: no EOS). Time to first token: image in, first token out. "
             "Peak RSS: VmHWM of the side's own process (loading included); loaded: RSS after loading. CPU s/caption: the "
             "process's user + system time per timed run (less inflated than wall time when other work shares the cores). "
             f"Tiny: median of {args.repeats or 5} runs after a warm-up; full size: {args.repeats or 1} run"
             f"{'' if args.warmup else ', no warm-up (the first run pays one-time setup)'}.", "",
             "| model | side | first token s | ms/token | caption s | speed-up | CPU s/caption | peak RSS MiB | loaded RSS MiB |",
             "|---|---|---|---|---|---|---|---|---|"]
    profiles = []
    for model in args.models:
        for size in args.sizes:
            repeats = args.repeats or (5 if size == "tiny" else 1)
            warmup = size == "tiny" or args.warmup
            with tempfile.TemporaryDirectory() as tmp:
                (smolvlm_checkpoint if model == "smolvlm" else florence2_checkpoint)(Path(tmp), size)
                baseline = None
                for label, variant in VARIANTS[model]:
                    if args.variants and not any(v in label for v in args.variants):
                        continue
                    spec = dict(variant, model=model, path=tmp, tokens=args.tokens, repeats=repeats, warmup=warmup,
                                profile=args.profile and "bf16" in label)
                    r = run_side(spec)
                    name = NAMES[(model, size)]
                    if "error" in r:
                        lines.append(f"| {name} | {label} | failed: {r['error']} | | | | | | |")
                        print(lines[-1], flush=True)
                        continue
                    baseline = baseline or r["caption_s"]
                    lines.append(f"| {name} | {label} | {r['ttft_s']:.3f} | {r['per_token_s'] * 1e3:.1f} | "
                                 f"{r['caption_s']:.3f} | {baseline / r['caption_s']:.2f}x | {r['cpu_s']:.2f} | "
                                 f"{r['peak_rss_mib']:.0f} | {r['loaded_rss_mib']:.0f} |")
                    print(lines[-1], flush=True)
                    if "stages" in r:
                        profiles.append((f"{name}, {label}", r["stages"]))
    lines += ["", f"Load after the run: {subprocess.run(['uptime'], capture_output=True, text=True).stdout.strip()}"]
    for title, stages in profiles:
        lines += ["", f"## Our time by stage: {title}", "", "| stage | ms |", "|---|---|"]
        lines += [f"| {k} | {v * 1e3:.1f} |" for k, v in stages.items() if k != "top ops"]
        lines += ["", "| op (self CPU time, one caption) | calls | ms | % |", "|---|---|---|---|"]
        lines += [f"| {k} | {c} | {ms:.1f} | {pct:.1f} |" for k, c, ms, pct in stages["top ops"]]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
