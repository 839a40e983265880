"""SmolVLM-256M/500M at full size on one GPU: parity with transformers in fp32, then timings of our bf16, int8,
llm_int8 and nf4 variants next to transformers bf16 on the same inputs.

No hub access is needed: each model is a random checkpoint written here with the published configuration
(shared/reference/vlm_models.md A.1) and a tokenizer carrying SmolVLM's special tokens at their real ids. The
image is a square one (17 tiles, 1127 prompt tokens), as in the anchor "transformers bf16: 55 ms to first token,
19.7 ms per token". End of utterance is kept from winning (its lm_head row is zeroed) so every run decodes the
full 64 tokens. Each variant times a first token and a whole caption back to back, five times: first token and
caption are the medians, ms per token the median of the pairs' differences over 63 tokens.

    python benchmarks/bench_smolvlm.py --out benchmarks/results/smolvlm-h100-DATE.md [--models 256M 500M]
        [--profile benchmarks/results/smolvlm-profile-h100-DATE.txt]

    python benchmarks/bench_smolvlm.py --batch 8 [--distinct] [--models 256M] [--out FILE]
    python benchmarks/bench_smolvlm.py --batch 4 --distinct --tiny --device cpu     # a quick check, no GPU

--batch N captions N meme-sized images (N copies of one 640x480 image, or with --distinct N different sizes and
so different tile counts and prompt lengths) and reports images per second: ours in one batched generate
(caption_batch: our processor, the prompts padded on the left) and one image at a time (caption), next to
transformers' processor(padding=True, padding_side="left") + batched generate, the same images and
max_new_tokens (end of utterance never wins, so every row decodes all of them). --tiny swaps the model for a
tiny random one of the same processor geometry, to check the script on a CPU.

--profile records one 64-token caption of the first model (ours bf16, then transformers bf16) with the PyTorch
profiler: the time of each stage (our stages are record_function scopes: smolvlm.image_features, .prefill,
.decode) and the kernels that take the most GPU time, so the next bottleneck is visible.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch
import transformers
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
from transformers.models.idefics3.image_processing_pil_idefics3 import Idefics3ImageProcessorPil
from transformers.models.idefics3.processing_idefics3 import Idefics3Processor

from imagetotext import _C

CONFIGS = {
    "256M": dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                 num_key_value_heads=3),
    "500M": dict(hidden_size=960, intermediate_size=2560, num_hidden_layers=32, num_attention_heads=15,
                 num_key_value_heads=5),
}
SPECIALS = (["<global-img>"] + [f"<row_{r}_col_{c}>" for r in range(1, 7) for c in range(1, 7)]
            + ["<fake_token_around_image>", "<image>"])
CHAT_TEMPLATE = (
    "<|im_start|>{% for message in messages %}{{message['role'] | capitalize}}{% if message['content'][0]['type'] "
    "== 'image' %}{{':'}}{% else %}{{': '}}{% endif %}{% for line in message['content'] %}{% if line['type'] == "
    "'text' %}{{line['text']}}{% elif line['type'] == 'image' %}{{ '<image>' }}{% endif %}{% endfor %}"
    "<end_of_utterance>\n{% endfor %}{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}")
NEW_TOKENS = 64
PAIRS = 5  # timed (first token, caption) pairs per variant
CHAT = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Can you describe this image?"}]}]
# A tiny text and vision model with the real processor geometry (512-pixel tiles, 64 tokens each): --tiny.
TINY = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)
TINY_VISION = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2,
               "patch_size": 64, "image_size": 512}


def smolvlm_tokenizer() -> Tokenizer:
    """Byte-level BPE whose specials sit at SmolVLM's ids: <|im_start|> 1, <global-img> 49152, <image> 49190,
    <end_of_utterance> 49279 (filler vocabulary in between)."""
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {"<|endoftext|>": 0, "<|im_start|>": 1, "<|im_end|>": 2}
    for ch in sorted(alphabet):
        vocab[ch] = len(vocab)
    while len(vocab) < 49152:
        vocab[f"filler{len(vocab)}"] = len(vocab)
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens([AddedToken(t, normalized=False, special=True)
                                  for t in ["<|endoftext|>", "<|im_start|>", "<|im_end|>"] + SPECIALS])
    tokenizer.add_special_tokens([AddedToken(f"<|reserved_special_token_{i}|>", normalized=False, special=True)
                                  for i in range(88)])
    tokenizer.add_special_tokens([AddedToken("<end_of_utterance>", normalized=False, special=True)])
    assert tokenizer.token_to_id("<image>") == 49190 and tokenizer.token_to_id("<end_of_utterance>") == 49279
    return tokenizer


def write_checkpoint(path: Path, size: str, tiny: bool = False):
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=smolvlm_tokenizer(), eos_token="<end_of_utterance>",
                                                pad_token="<|im_end|>")
    processor = Idefics3Processor(
        image_processor=Idefics3ImageProcessorPil(size={"longest_edge": 2048}, max_image_size={"longest_edge": 512},
                                                  image_mean=[0.5] * 3, image_std=[0.5] * 3),
        tokenizer=fast, image_seq_len=64, chat_template=CHAT_TEMPLATE)
    config = transformers.Idefics3Config(
        scale_factor=1 if tiny else 4, image_token_id=49190, tie_word_embeddings=False,
        vision_config=TINY_VISION if tiny else {"hidden_size": 768, "num_attention_heads": 12, "patch_size": 16,
                                                "image_size": 512},
        text_config={"model_type": "llama", "vocab_size": 49280, "head_dim": 16 if tiny else 64,
                     "max_position_embeddings": 8192, "rms_norm_eps": 1e-5, "rope_theta": 100000.0, "pad_token_id": 2,
                     **(TINY if tiny else CONFIGS[size])})
    torch.manual_seed(0)
    model = transformers.Idefics3ForConditionalGeneration(config).eval()
    with torch.no_grad():
        model.lm_head.weight[49279] = 0.0
    model.generation_config.eos_token_id = 49279
    model.generation_config.pad_token_id = 2  # <|im_end|>, as SmolVLM's generation_config
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return processor


def cuda_seconds(fn):
    torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    return time.perf_counter() - start


def wall_time(fn, device, repeat):
    """Median seconds of fn() (the device synchronized around each run)."""
    times = []
    for _ in range(repeat):
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


MEME_SIZES = [(480, 640), (500, 500), (360, 640), (640, 360), (600, 800), (300, 400), (720, 720), (640, 480)]


def meme_images(count: int, distinct: bool):
    """uint8 [H, W, 3] images: `count` copies of one 640x480 image, or `count` images of different sizes."""
    generator = torch.Generator().manual_seed(1)
    if not distinct:
        return [torch.randint(0, 256, MEME_SIZES[0] + (3,), dtype=torch.uint8, generator=generator)] * count
    return [torch.randint(0, 256, MEME_SIZES[i % len(MEME_SIZES)] + (3,), dtype=torch.uint8, generator=generator)
            for i in range(count)]


def run_batch(size: str, batch: int, distinct: bool, device: str, tiny: bool, repeat: int, rows: list[str]):
    """Images per second for `batch` images: ours batched and one at a time, transformers batched."""
    from PIL import Image
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp)
        processor = write_checkpoint(path, size, tiny=tiny)
        processor.tokenizer.padding_side = "left"  # transformers' advice for batched generation
        pixels = meme_images(batch, distinct)
        pil_images = [[Image.fromarray(p.numpy())] for p in pixels]
        prompt = processor.apply_chat_template(CHAT, add_generation_prompt=True)
        dtype = torch.bfloat16 if device == "cuda" else torch.float32
        reference = transformers.Idefics3ForConditionalGeneration.from_pretrained(
            path, dtype=dtype, attn_implementation="eager").to(device).eval()
        ours = _C.SmolVLM(str(path), device=device, dtype=str(dtype).removeprefix("torch."))

        def hf_batch():
            inputs = processor(text=[prompt] * batch, images=pil_images, padding=True, return_tensors="pt").to(device)
            inputs["pixel_values"] = inputs["pixel_values"].to(dtype)
            with torch.no_grad():
                return reference.generate(**inputs, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS,
                                          do_sample=False)

        lengths = processor(text=[prompt] * batch, images=pil_images, padding=True)["attention_mask"]
        lengths = sorted(sum(row) for row in lengths)
        runs = {"imagetotext caption_batch": lambda: ours.caption_batch(pixels, max_new_tokens=NEW_TOKENS),
                "imagetotext caption, one at a time": lambda: [ours.caption(p, max_new_tokens=NEW_TOKENS)
                                                               for p in pixels],
                "transformers batched generate": hf_batch}
        results = {}
        for name, fn in runs.items():
            fn()  # warm-up (our first batch records its CUDA graph)
            seconds = wall_time(fn, device, repeat)
            results[name] = seconds
            rows.append(f"| {size if not tiny else 'tiny'} | {name} | {batch} | {lengths[0]}-{lengths[-1]} "
                        f"| {seconds:.3f} | {batch / seconds:.2f} |")
        tokens = [t for _, t in ours.caption_batch(pixels, max_new_tokens=NEW_TOKENS)]
        assert all(len(t) == NEW_TOKENS for t in tokens), "every row decodes max_new_tokens"
        print(json.dumps({k: {"s": v, "images_per_s": batch / v} for k, v in results.items()}, indent=1))


def measure(load, first_token, caption):
    gc.collect()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    model = load()
    weights = torch.cuda.memory_allocated() - before
    load_peak = torch.cuda.max_memory_allocated() - before
    torch.cuda.reset_peak_memory_stats()  # the captions' peak, as issue 8 defines it, apart from loading's
    first_token(model)  # warm-ups (our first caption records the decode step's CUDA graph)
    caption(model)
    # A first token and a caption back to back, PAIRS times: the per-token time is the median of the pairs'
    # differences, so a slow spell of this shared machine inflates both halves of a pair instead of leaking
    # from a first-token median into the token time (a single run once gave 0.56 ms a token that way).
    pairs = [(cuda_seconds(lambda: first_token(model)), cuda_seconds(lambda: caption(model))) for _ in range(PAIRS)]
    ttft = statistics.median(first for first, _ in pairs)
    total = statistics.median(whole for _, whole in pairs)
    per_token = statistics.median(whole - first for first, whole in pairs) / (NEW_TOKENS - 1)
    peak = torch.cuda.max_memory_allocated() - before
    del model
    return {"ttft_ms": ttft * 1e3, "ms_per_token": per_token * 1e3, "caption_s": total,
            "weights_mib": weights / 2**20, "peak_mib": peak / 2**20, "load_peak_mib": load_peak / 2**20}


def profile(path: Path, input_ids, pixel_values, cuda_inputs, out: Path):
    from torch.profiler import ProfilerActivity, profile as torch_profile
    sections = [f"# One {NEW_TOKENS}-token caption, {torch.cuda.get_device_name()}: python {' '.join(__import__('sys').argv)}"]
    ours = _C.SmolVLM(str(path), device="cuda")
    reference = transformers.Idefics3ForConditionalGeneration.from_pretrained(
        path, dtype=torch.bfloat16, attn_implementation="eager").to("cuda").eval()
    runs = {"imagetotext bf16": lambda: ours.generate(input_ids, pixel_values, max_new_tokens=NEW_TOKENS),
            "transformers bf16": lambda: reference.generate(**cuda_inputs, max_new_tokens=NEW_TOKENS,
                                                            min_new_tokens=NEW_TOKENS, do_sample=False)}
    for name, fn in runs.items():
        with torch.no_grad():
            fn()  # warm-up (our first call records the decode step's CUDA graph)
            torch.cuda.synchronize()
            with torch_profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
                fn()
                torch.cuda.synchronize()
        events = prof.key_averages()
        stages = [e for e in events if e.key.startswith("smolvlm.")]
        sections.append(f"\n## {name}\n\nStages (wall time on the host; GPU time of the kernels they launched):")
        for e in sorted(stages, key=lambda e: e.key):
            sections.append(f"  {e.key:28s} host {e.cpu_time_total / 1e3:9.2f} ms   "
                            f"gpu {getattr(e, 'device_time_total', 0) / 1e3:9.2f} ms   calls {e.count}")
        sections.append("\nTop GPU time:\n" + events.table(sort_by="device_time_total", row_limit=25))
    out.write_text("\n".join(sections) + "\n")
    print("\n".join(sections[:40]))


def run(size: str, rows: list[str], profile_out: Path | None = None):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp)
        write_checkpoint(path, size)
        pixels = torch.randint(0, 256, (768, 768, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))

        # Parity in fp32: the same inputs (our processor's) through both models.
        ours = _C.SmolVLM(str(path), device="cuda", dtype="float32")
        inputs = ours.process(pixels)
        input_ids, pixel_values = inputs["input_ids"], inputs["pixel_values"]
        reference = transformers.Idefics3ForConditionalGeneration.from_pretrained(
            path, dtype=torch.float32, attn_implementation="eager").to("cuda").eval()
        with torch.no_grad():
            expected = reference(input_ids=input_ids.cuda(), pixel_values=pixel_values[None]).logits
        logits = ours.prompt_logits(input_ids, pixel_values)
        err = float((logits.double() - expected.double()).abs().max() / expected.double().abs().max())
        rows.append(f"| {size} | fp32 parity: prompt logits max relative error {err:.2e} "
                    f"({input_ids.shape[1]} prompt tokens, {pixel_values.shape[0]} tiles) | | | | | | |")
        del ours, reference, expected, logits
        gc.collect()

        cuda_inputs = {"input_ids": input_ids.cuda(), "pixel_values": pixel_values[None].cuda().to(torch.bfloat16)}

        def hf_load():
            return transformers.Idefics3ForConditionalGeneration.from_pretrained(
                path, dtype=torch.bfloat16, attn_implementation="eager").to("cuda").eval()

        def hf_generate(model, n):
            with torch.no_grad():
                return model.generate(**cuda_inputs, max_new_tokens=n, min_new_tokens=n, do_sample=False)

        if profile_out is not None:
            profile(path, input_ids, pixel_values, cuda_inputs, profile_out)
        results = {"transformers bf16 (eager)": measure(hf_load, lambda m: hf_generate(m, 1),
                                                        lambda m: hf_generate(m, NEW_TOKENS))}
        for quantization in ["none", "int8", "llm_int8", "nf4"]:
            def our_generate(model, n):
                return model.generate(input_ids, pixel_values, max_new_tokens=n)
            results[f"imagetotext bf16 {quantization}"] = measure(
                lambda: _C.SmolVLM(str(path), quantization=quantization, device="cuda"),
                lambda m: our_generate(m, 1), lambda m: our_generate(m, NEW_TOKENS))
        for name, r in results.items():
            rows.append(f"| {size} | {name} | {r['ttft_ms']:.1f} | {r['ms_per_token']:.2f} | {r['caption_s']:.3f} "
                        f"| {r['weights_mib']:.0f} | {r['peak_mib']:.0f} | {r['load_peak_mib']:.0f} |")
        print(json.dumps(results, indent=1))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["256M", "500M"], choices=sorted(CONFIGS))
    parser.add_argument("--out", type=Path)
    parser.add_argument("--profile", type=Path, help="write a profile of one caption of the first model here")
    parser.add_argument("--batch", type=int, help="images per second for a batch of this many meme-sized images")
    parser.add_argument("--distinct", action="store_true", help="--batch: images of different sizes, not copies")
    parser.add_argument("--tiny", action="store_true", help="--batch: a tiny random model (checks the script)")
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--repeat", type=int, default=3, help="--batch: timed runs (the median is reported)")
    args = parser.parse_args()
    if args.batch:
        device_name = torch.cuda.get_device_name() if args.device == "cuda" else "CPU"
        rows = [f"# SmolVLM batch captioning on {device_name} (random weights, {NEW_TOKENS} new tokens per image, "
                f"{'different' if args.distinct else 'identical'} meme-sized images)", "",
                "| model | run | images | prompt tokens | seconds | images/s |", "|---|---|---|---|---|---|"]
        for size in args.models[:1] if args.tiny else args.models:
            run_batch(size, args.batch, args.distinct, args.device, args.tiny, args.repeat, rows)
        text = "\n".join(rows) + "\n"
        print(text)
        if args.out:
            args.out.write_text(text)
        return
    rows = [f"# SmolVLM on {torch.cuda.get_device_name()} (random weights, 17-tile image, {NEW_TOKENS} new tokens)",
            "", "| model | variant | first token ms | ms/token | 64-token caption s | weights MiB | peak MiB "
            "| load peak MiB |", "|---|---|---|---|---|---|---|---|"]
    for i, size in enumerate(args.models):
        run(size, rows, args.profile if i == 0 else None)
    text = "\n".join(rows) + "\n"
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
