"""Where a Florence-2 caption's peak GPU memory above the weights comes from (issue 8: peak <= weights + 200 MB).

Loads a random full-size checkpoint (bench_florence2.py's), runs one 64-token caption (3 beams, no EOS) as a
warm-up, then measures, each from the memory allocated before it: the peak of `image_features` alone, of `encode`
(image features, projector and encoder), and of `generate` given the encoder output; then the whole caption's peak,
and what stays allocated between captions (the recorded decode step's state and its graph's pool). For that last
part it lists the live blocks the caption left behind, by size, from the caching allocator's snapshot.

Usage (GPU machine): python benchmarks/florence2_caption_memory.py [base|large ...] [--decoding auto eager]
"""

from __future__ import annotations

import argparse
import collections
import sys
import tempfile
from pathlib import Path

import torch
import transformers

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "python"))
from test_florence2_gpu import BASE, LARGE, PROMPT  # noqa: E402

from imagetotext import _C  # noqa: E402

BEAMS = 3
TOKENS = 64
MIB = 2 ** 20


def live_blocks():
    """Address -> size of every block the caching allocator has handed out."""
    blocks = {}
    for segment in torch.cuda.memory_snapshot():
        address = segment["address"]
        for block in segment["blocks"]:
            if block["state"] == "active_allocated":
                blocks[address] = block["size"]
            address += block["size"]
    return blocks


def peak_of(run):
    """MiB above the memory allocated before `run`: its peak, and what it leaves allocated."""
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    run()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - before) / MIB, (torch.cuda.memory_allocated() - before) / MIB


def main(sizes, decodings):
    pixel_values = torch.randn(1, 3, 768, 768, generator=torch.Generator().manual_seed(1)).cuda()
    print(f"GPU: {torch.cuda.get_device_name()}; {BEAMS} beams, {TOKENS} new tokens, no EOS; MiB above the memory "
          "allocated before each part")
    for size in sizes:
        torch.manual_seed(0)
        config = transformers.Florence2Config(**(BASE if size == "base" else LARGE), image_token_id=51289)
        with tempfile.TemporaryDirectory() as directory:
            transformers.Florence2ForConditionalGeneration(config).save_pretrained(directory)
            prompt = torch.tensor([PROMPT], device="cuda")
            for decoding in decodings:
                torch.cuda.empty_cache()
                empty = torch.cuda.memory_allocated()
                model = _C.Florence2Model.load(directory, device="cuda", dtype="bfloat16")
                weights = (torch.cuda.memory_allocated() - empty) / MIB

                def caption():
                    encoded = model.encode(pixel_values, prompt)
                    model.generate(encoded, max_new_tokens=TOKENS, num_beams=BEAMS, no_repeat_ngram_size=3,
                                   forced_bos_token_id=0, early_stopping=True, eos_token_ids=[], decoding=decoding)

                before_first = live_blocks()
                first_peak, kept = peak_of(caption)  # the first caption records the decode step
                left = {a: s for a, s in live_blocks().items() if a not in before_first}
                vision_peak, _ = peak_of(lambda: model.image_features(pixel_values))
                encode_peak, _ = peak_of(lambda: model.encode(pixel_values, prompt))
                encoded = model.encode(pixel_values, prompt)
                generate_peak, _ = peak_of(lambda: model.generate(
                    encoded, max_new_tokens=TOKENS, num_beams=BEAMS, no_repeat_ngram_size=3, forced_bos_token_id=0,
                    early_stopping=True, eos_token_ids=[], decoding=decoding))
                del encoded
                caption_peak, _ = peak_of(caption)
                print(f"\n## {size} bf16, decoding {decoding}: weights {weights:.0f} MiB")
                print(f"first caption: peak {first_peak:.0f}, left allocated after it {kept:.1f}")
                print(f"image_features peak {vision_peak:.0f}; encode peak {encode_peak:.0f}; "
                      f"generate peak {generate_peak:.0f} (encoder output held); a later caption's peak "
                      f"{caption_peak:.0f}")
                sizes_left = collections.Counter(left.values())
                print(f"blocks left by the first caption: {len(left)}, {sum(left.values()) / MIB:.1f} MiB; by size:")
                for block_size, count in sorted(sizes_left.items(), key=lambda item: -item[0] * item[1])[:15]:
                    print(f"  {count:4d} x {block_size / MIB:9.3f} MiB = {count * block_size / MIB:8.1f} MiB")
                del model


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sizes", nargs="*", default=["large"], choices=["base", "large"])
    parser.add_argument("--decoding", nargs="+", default=["auto", "eager"], choices=["auto", "eager"])
    args = parser.parse_args()
    main(args.sizes, args.decoding)
