"""Encoding speed of imagetotext.Tokenizer against the tokenizers library, one thread each.

Builds a SmolVLM-style tokenizer (Digits + ByteLevel, BPE trained with the tokenizers library on a generated
corpus, the image-prompt special tokens added), generates a large text (default 5 MB of mixed ASCII, accents,
CJK, emoji, digits and whitespace runs, with special tokens), and encodes the same list of lines with both
libraries, checking that every id sequence agrees. Prints microseconds per MB for each and the ratio, and writes
them to benchmarks/results/tokenizer-cpu-<date>.txt with the command on the first line.

    TOKENIZERS_PARALLELISM=false python benchmarks/bench_tokenizer.py [--megabytes 5] [--vocab-size 2000]
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import random
import shlex
import sys
import tempfile
import time
from pathlib import Path

os.environ["TOKENIZERS_PARALLELISM"] = "false"  # the library's Python encode runs on one thread then

from tokenizers import AddedToken, Tokenizer as OracleTokenizer, decoders, models, pre_tokenizers, trainers  # noqa: E402

import imagetotext  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
WORDS = ("the cat sat on a mat Describe image detail What is this photo running dogs naïve café résumé Straße "
         "déjà über niño 日本語 中文 漢字 東京 写真 한국어 Привет мир γειά").split()
OTHERS = ["😀", "🎉", "👍🏽", ".", ",", "!", "'s", "'ll", "(", ")", "-", "2024", "42", "3.14", "  ", "\t", "    "]
SPECIALS = ["<|im_start|>", "<end_of_utterance>", "<image>", "<fake_token_around_image>", "<global-img>",
            "<row_1_col_1>"]


def generated_lines(megabytes: float, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    lines, size = [], 0
    while size < megabytes * 1e6:
        pieces = []
        for _ in range(rng.randrange(5, 60)):
            roll = rng.random()
            pieces.append(rng.choice(WORDS) if roll < 0.75 else rng.choice(SPECIALS) if roll < 0.78 else rng.choice(OTHERS))
        line = " ".join(pieces)
        lines.append(line)
        size += len(line.encode())
    return lines


def build_tokenizer(vocab_size: int, path: Path) -> None:
    tokenizer = OracleTokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)])
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, show_progress=False, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(generated_lines(1.0, seed=1), trainer=trainer)
    tokenizer.add_special_tokens([AddedToken(t, normalized=False, special=True) for t in SPECIALS])
    tokenizer.save(str(path))


def best_seconds(encode, lines: list[str], repeats: int) -> tuple[float, list]:
    best, ids = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        ids = [encode(line) for line in lines]
        best = min(best, time.perf_counter() - start)
    return best, ids


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--megabytes", type=float, default=5.0)
    parser.add_argument("--vocab-size", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    lines = generated_lines(args.megabytes)
    megabytes = sum(len(line.encode()) for line in lines) / 1e6
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "tokenizer.json"
        build_tokenizer(args.vocab_size, path)
        oracle = OracleTokenizer.from_file(str(path))
        ours = imagetotext.Tokenizer.from_file(path)
        # Both warm up first (our word cache, their cache), so the timings compare steady states.
        oracle_seconds, oracle_ids = best_seconds(lambda line: oracle.encode(line, add_special_tokens=False).ids,
                                                  lines, args.repeats)
        our_seconds, our_ids = best_seconds(lambda line: ours.encode(line, False), lines, args.repeats)
    if our_ids != oracle_ids:
        print("the ids differ from the tokenizers library's: the timing means nothing", file=sys.stderr)
        return 1

    import tokenizers

    command = "TOKENIZERS_PARALLELISM=false python " + " ".join(shlex.quote(a) for a in sys.argv)
    report = "\n".join([
        command,
        f"date: {datetime.datetime.now().isoformat(timespec='seconds')}; host: {platform.node()}, "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; one thread each",
        f"text: {len(lines)} lines, {megabytes:.2f} MB; SmolVLM-style tokenizer (Digits + ByteLevel, BPE vocab "
        f"{args.vocab_size}, {len(SPECIALS)} special tokens); best of {args.repeats}; every id sequence identical",
        f"tokenizers {tokenizers.__version__}: {oracle_seconds / megabytes * 1e6:,.0f} us/MB",
        f"imagetotext:       {our_seconds / megabytes * 1e6:,.0f} us/MB",
        f"ratio (tokenizers time / imagetotext time): {oracle_seconds / our_seconds:.2f}x",
    ])
    print(report)
    results = ROOT / "benchmarks" / "results" / f"tokenizer-cpu-{datetime.date.today().isoformat()}.txt"
    results.write_text(report + "\n")
    print(f"written to {results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
