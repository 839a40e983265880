"""The ``imagetotext`` command: caption images, list and fetch models, compare a quantized model with its base.

    imagetotext caption [--model NAME|DIR|HUB_ID] [--device DEV] [--dtype T] [--max-new-tokens N]
                        [--batch-size N] [--json] PATH...          files, folders and glob patterns
    imagetotext models                                            every model, with its weight memory
    imagetotext download MODEL                                    fetch into the Hugging Face cache
    imagetotext validate --base MODEL --quantized MODEL IMAGE...  captions side by side, match rate
    imagetotext quantize MODEL --to nf4|int8 OUTDIR               write a pre-quantized checkpoint

Exit status: 0 when everything worked, 1 when some images failed (each reported, the rest still captioned),
2 for a usage error or a model that cannot be loaded (a message on stderr, never a traceback).
"""

from __future__ import annotations

import argparse
import difflib
import glob
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import imagetotext

#: File extensions a folder is searched for.
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp", ".tif", ".tiff"}


class UsageError(Exception):
    """A command-line mistake: reported on stderr with exit status 2."""


# ---------------------------------------------------------------------------------------------------------
# Inputs and models
# ---------------------------------------------------------------------------------------------------------


def expand_paths(arguments: list[str], recursive: bool = False) -> Iterator[tuple[str, str | None]]:
    """Each argument as image paths: a file as given, a folder's images (sorted), a glob's matches (sorted).
    Yields ``(path, None)`` or ``(argument, error)`` for a pattern that matches nothing."""
    for argument in arguments:
        if os.path.isdir(argument):
            walk = Path(argument).rglob("*") if recursive else Path(argument).iterdir()
            for path in sorted(walk):
                if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES:
                    yield str(path), None
        elif glob.has_magic(argument) and not os.path.exists(argument):
            matches = sorted(p for p in glob.glob(argument, recursive=True) if os.path.isfile(p))
            if not matches:
                yield argument, "no file matches this pattern"
            for match in matches:
                yield match, None
        else:
            yield argument, None  # a missing file is reported when it is read


def _is_checkpoint(model: str) -> bool:
    return os.path.isdir(model) or ("/" in model and model not in imagetotext.available_models)


def open_model(args: argparse.Namespace, model: str, progress=None) -> imagetotext.Captioner:
    """A registry name through model_selector; a directory or hub id ("org/name") through load_model."""
    common = dict(device=args.device, dtype=args.dtype, quantization=args.quantization,
                  max_new_tokens=args.max_new_tokens, progress=progress)
    if _is_checkpoint(model):
        return imagetotext.load_model(model, **common)
    return imagetotext.model_selector(model, test_delay=args.test_delay, **common)


def _tqdm(**kwargs):
    """A tqdm bar on stderr, hidden when stderr is not a terminal (or tqdm is missing)."""
    try:
        from tqdm import tqdm
    except ImportError:  # a dependency of the wheel; an install without it just shows no bars
        kwargs["disable"] = True

        class tqdm:  # noqa: N801  the few methods used here, doing nothing
            def __init__(self, **_):
                self.n = 0

            def update(self, count):
                self.n += count

            def close(self):
                pass

            def __enter__(self):
                return self

            def __exit__(self, *_):
                pass

    return tqdm(file=sys.stderr, **kwargs)


class DownloadBars:
    """One tqdm bar per file while weights download (on stderr; hidden when stderr is not a terminal)."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self.bars: dict[str, object] = {}

    def __call__(self, filename: str, received: int, total: int) -> None:
        if not self.enabled:
            return
        bar = self.bars.get(filename)
        if bar is None:
            bar = self.bars[filename] = _tqdm(total=total or None, desc=filename, unit="B", unit_scale=True,
                                              unit_divisor=1024, leave=False, disable=None)
        bar.update(received - bar.n)

    def close(self) -> None:
        for bar in self.bars.values():
            bar.close()
        self.bars.clear()


# ---------------------------------------------------------------------------------------------------------
# caption
# ---------------------------------------------------------------------------------------------------------


def _print(*args, **kwargs) -> None:
    """print() that first clears the progress bars on the terminal and redraws them after, so a caption line
    never lands in the middle of a bar."""
    try:
        from tqdm import tqdm
    except ImportError:
        print(*args, **kwargs)
        return
    with tqdm.external_write_mode(file=sys.stderr):
        print(*args, **kwargs)


def _report(args: argparse.Namespace, path: str, caption: str | None = None, error: BaseException | str | None = None):
    if error is not None:
        text = str(error)
        if args.json:
            _print(json.dumps({"path": path, "error": text}), flush=True)
        else:
            _print(f"{path}\terror: {text}", file=sys.stderr, flush=True)
    elif args.json:
        _print(json.dumps({"path": path, "caption": caption}), flush=True)
    else:
        _print(f"{path}\t{caption}", flush=True)


def _caption(args: argparse.Namespace) -> int:
    if args.batch_size < 1:
        raise UsageError("--batch-size must be at least 1")
    downloads = DownloadBars(enabled=not args.no_progress)
    model = open_model(args, args.model, downloads)
    model.download()  # load (or fetch) before the first image, so a model error stops here
    downloads.close()

    items = list(expand_paths(args.paths, args.recursive))
    failures = 0
    with _tqdm(total=len(items), unit="image", disable=True if args.no_progress else None) as bar:
        for start in range(0, len(items), args.batch_size):
            batch = items[start:start + args.batch_size]
            pixels, names, paths = [], [], []
            for path, error in batch:
                if error is None:
                    try:
                        pixels.append(imagetotext.load_rgb_image(path))
                    except (imagetotext.ImageToTextError, OSError) as decode_error:
                        error = decode_error
                if error is not None:
                    failures += 1
                    _report(args, path, error=error)
                else:
                    names.append(Path(path).stem)
                    paths.append(path)
            if pixels:
                try:
                    captions = model.extract_pixels_batch(pixels, names)
                except imagetotext.DeviceError as error:  # out of memory: report the batch, go on
                    failures += len(paths)
                    for path in paths:
                        _report(args, path, error=error)
                else:
                    for path, caption in zip(paths, captions):
                        _report(args, path, caption=caption)
            bar.update(len(batch))
    return 1 if failures else 0


# ---------------------------------------------------------------------------------------------------------
# models
# ---------------------------------------------------------------------------------------------------------

def _cached_checkpoint(repo_id: str, revision: str) -> Path | None:
    for filename in ("model.safetensors", "model.safetensors.index.json"):
        path = imagetotext.hub.try_to_load_from_cache(repo_id, filename, revision)
        if path is not None and path.exists():
            return path
    return None


def _format_bytes(count: int) -> str:
    return f"{count / 2**20:,.0f} MiB" if count >= 2**20 else f"{count / 2**10:,.1f} KiB"


def _models(args: argparse.Namespace) -> int:
    from imagetotext.model_shapes import config_weight_memory

    rows = []
    for row in imagetotext.model_registry():
        computed = measured = None
        computed_text, measured_text = "", "not cached"
        if row["family"] == "test":
            computed, measured, computed_text, measured_text = 0, 0, "0", "0"
        else:
            try:
                # Our model built on the meta device from the shapes the config gives, with the variant's policy.
                computed = config_weight_memory(row["name"], row["quantization"])
                computed_text = _format_bytes(computed)
            except imagetotext.ModelNotImplementedError:
                computed_text = "n/a (not built yet)"  # moondream2's quantized layers follow a model to come
            except (imagetotext.ImageToTextError, OSError) as error:
                computed_text = f"n/a ({error})"
            if _cached_checkpoint(row["repo_id"], row["revision"]) is not None:
                try:
                    # The same computation from the cached checkpoint's own tensors.
                    measured = imagetotext.weight_memory(row["name"], row["quantization"], offline=True)
                    measured_text = _format_bytes(measured)
                except (imagetotext.ImageToTextError, OSError) as error:
                    measured_text = f"unreadable checkpoint ({error})"
        rows.append({**row, "computed_weight_bytes": computed, "computed_weights": computed_text,
                     "measured_weight_bytes": measured, "measured_weights": measured_text})
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    header = ("name", "family", "repo_id", "revision", "quantization", "computed", "measured")
    keys = ("name", "family", "repo_id", "revision", "quantization", "computed_weights", "measured_weights")
    table = [header, *[tuple(str(row[k]) for k in keys) for row in rows]]
    widths = [max(len(line[i]) for line in table) for i in range(len(header))]
    for values in table:
        print("  ".join(v.ljust(w) for v, w in zip(values, widths)).rstrip())
    print("\nMemory of the loaded weights on CUDA (bf16; the layers the variant quantizes in the bitsandbytes layout).\n"
          "computed: from the tensor shapes the model's config gives (shipped with imagetotext; nothing downloaded).\n"
          "measured: from the checkpoint in the Hugging Face cache; 'imagetotext download NAME' fetches one.")
    return 0


# ---------------------------------------------------------------------------------------------------------
# download
# ---------------------------------------------------------------------------------------------------------


def _download(args: argparse.Namespace) -> int:
    if _is_checkpoint(args.model):
        repo_id, revision = args.model, args.revision or "main"
    else:
        row = next((r for r in imagetotext.model_registry() if r["name"] == args.model), None)
        if row is None:
            imagetotext.model_selector(args.model)  # raises UnknownModelError listing the names
        if row["family"] == "test":
            print("test: nothing to download (the test model has no weights)")
            return 0
        repo_id, revision = row["repo_id"], args.revision or row["revision"]
    bars = DownloadBars(enabled=not args.no_progress)
    try:
        files = imagetotext._C.download_checkpoint(repo_id, revision, None, bars)
    finally:
        bars.close()
    for path in files:
        print(path)
    return 0


# ---------------------------------------------------------------------------------------------------------
# quantize
# ---------------------------------------------------------------------------------------------------------


def _quantize(args: argparse.Namespace) -> int:
    if not os.path.isdir(args.model):
        row = next((r for r in imagetotext.model_registry() if r["name"] == args.model), None)
        offline = os.environ.get("HF_HUB_OFFLINE", "").upper() in ("1", "ON", "YES", "TRUE")
        if not offline and (row is not None and row["family"] != "test" or row is None and "/" in args.model):
            # Fetch (or find) the checkpoint first, with download bars; quantizing then reads the cache.
            repo_id = row["repo_id"] if row else args.model
            revision = args.revision or (row["revision"] if row else "main")
            downloads = DownloadBars(enabled=not args.no_progress)
            try:
                imagetotext._C.download_checkpoint(repo_id, revision, None, downloads)
            finally:
                downloads.close()
    bars = []

    def on_layer(done: int, total: int, name: str) -> None:
        if not bars:
            bars.append(_tqdm(total=total, unit="layer", desc=f"quantizing to {args.to}",
                              disable=True if args.no_progress else None))
        bars[0].update(done - bars[0].n)

    try:
        report = imagetotext.quantize_checkpoint(args.model, args.to, args.outdir, keep_dense=args.keep_dense,
                                                 revision=args.revision, on_layer=on_layer)
    finally:
        for bar in bars:
            bar.close()
    print(f"{args.outdir}: {report['quantized_layers']} linear layers in {args.to}, {report['dense_layers']} kept "
          f"dense; tensors {_format_bytes(report['bytes_before'])} -> {_format_bytes(report['bytes_after'])}")
    return 0


# ---------------------------------------------------------------------------------------------------------
# validate
# ---------------------------------------------------------------------------------------------------------


def degenerate(caption: str) -> str | None:
    """Why a caption looks broken, or None: empty, or a phrase of 1 to 8 words repeated 3 times in a row."""
    words = caption.split()
    if not words:
        return "empty"
    for size in range(1, 9):
        for start in range(0, len(words) - 3 * size + 1):
            phrase = words[start:start + size]
            if phrase == words[start + size:start + 2 * size] == words[start + 2 * size:start + 3 * size]:
                return f"repeats '{' '.join(phrase)}'"
    return None


def similarity(a: str, b: str) -> float:
    """Word-level similarity in [0, 1] (difflib's ratio: 2 * matching words / total words)."""
    return difflib.SequenceMatcher(None, a.split(), b.split(), autojunk=False).ratio() if (a or b) else 1.0


def _validate(args: argparse.Namespace) -> int:
    base = open_model(args, args.base)
    quantized = open_model(args, args.quantized)
    items = list(expand_paths(args.paths, args.recursive))
    results, failures = [], 0
    for path, error in items:
        row = {"path": path}
        if error is None:
            try:
                row["base"] = base.extract(path)
                row["quantized"] = quantized.extract(path)
            except (imagetotext.ImageToTextError, OSError) as caught:
                error = caught
        if error is not None:
            failures += 1
            row["error"] = str(error)
        else:
            row["exact_match"] = row["base"] == row["quantized"]
            row["similarity"] = round(similarity(row["base"], row["quantized"]), 4)
            row["degenerate"] = degenerate(row["quantized"])
        results.append(row)
    compared = [r for r in results if "error" not in r]
    summary = {
        "base": args.base,
        "quantized": args.quantized,
        "images": len(compared),
        "failed": failures,
        "exact_match_rate": round(sum(r["exact_match"] for r in compared) / len(compared), 4) if compared else None,
        "mean_similarity": round(sum(r["similarity"] for r in compared) / len(compared), 4) if compared else None,
        "degenerate": sum(r["degenerate"] is not None for r in compared),
    }
    if args.json:
        print(json.dumps({"summary": summary, "images": results}, indent=2))
    else:
        for row in results:
            if "error" in row:
                print(f"{row['path']}\terror: {row['error']}", file=sys.stderr)
                continue
            flag = f"  DEGENERATE: {row['degenerate']}" if row["degenerate"] else ""
            mark = "=" if row["exact_match"] else "~"
            print(f"{row['path']}  [{mark} {row['similarity']:.2f}]{flag}\n  base:      {row['base']}\n"
                  f"  quantized: {row['quantized']}")
        if compared:
            print(f"\n{summary['images']} images: exact match {summary['exact_match_rate']:.0%}, mean similarity "
                  f"{summary['mean_similarity']:.2f}, degenerate {summary['degenerate']}")
    return 1 if failures else 0


# ---------------------------------------------------------------------------------------------------------


def _model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto)")
    parser.add_argument("--dtype", default="auto", help="auto, float32, float16 or bfloat16 (default auto)")
    parser.add_argument("--quantization", default=None, choices=["none", "int8", "llm_int8", "nf4", "fp4"],
                        help="override the model's weight format")
    parser.add_argument("--max-new-tokens", type=int, default=0, metavar="N",
                        help="longest caption in tokens (default: the service's setting for the model)")
    parser.add_argument("--test-delay", type=float, default=0.0,
                        help="seconds the 'test' model sleeps per image (default 0 here; the service's is 1)")
    parser.add_argument("--recursive", "-r", action="store_true", help="search folders recursively")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="imagetotext", description="Caption images with small vision-language models.")
    parser.add_argument("--version", action="version", version=f"imagetotext {imagetotext.__version__}")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars (they show only on a terminal)")
    commands = parser.add_subparsers(dest="command", required=True)

    caption = commands.add_parser("caption", help="caption image files, folders and glob patterns")
    caption.add_argument("paths", nargs="+", metavar="PATH", help="image files, folders or glob patterns")
    caption.add_argument("--model", default=imagetotext.default_model, metavar="MODEL",
                         help=f"a name from 'imagetotext models', a checkpoint folder or a hub id "
                              f"(default {imagetotext.default_model})")
    caption.add_argument("--batch-size", type=int, default=1, metavar="N", help="images per model call (default 1)")
    caption.add_argument("--json", action="store_true", help="one JSON object per line: {path, caption} or {path, error}")
    _model_arguments(caption)
    caption.set_defaults(run=_caption)

    models = commands.add_parser("models", help="list every model name with its hub id and weight memory")
    models.add_argument("--json", action="store_true", help="a JSON list instead of a table")
    models.set_defaults(run=_models)

    download = commands.add_parser("download", help="fetch a model into the Hugging Face cache")
    download.add_argument("model", metavar="MODEL", help="a name from 'imagetotext models' or a hub id")
    download.add_argument("--revision", default=None, help="branch, tag or commit (default: the registry's)")
    download.set_defaults(run=_download)

    validate = commands.add_parser("validate", help="compare a quantized model's captions with its base model's")
    validate.add_argument("--base", required=True, metavar="MODEL", help="the reference model, e.g. Florence-2-base")
    validate.add_argument("--quantized", required=True, metavar="MODEL", help="the model to check, e.g. Florence-2-base-int4")
    validate.add_argument("paths", nargs="+", metavar="IMAGE", help="image files, folders or glob patterns")
    validate.add_argument("--json", action="store_true", help="a JSON report")
    _model_arguments(validate)
    validate.set_defaults(run=_validate)

    quantize = commands.add_parser("quantize", help="write a pre-quantized checkpoint (bitsandbytes layout)")
    quantize.add_argument("model", metavar="MODEL",
                          help="a name from 'imagetotext models', a checkpoint folder or a hub id")
    quantize.add_argument("--to", required=True, choices=["nf4", "int8"], help="the weight format to write")
    quantize.add_argument("outdir", metavar="OUTDIR", help="a new or empty folder for the quantized checkpoint")
    quantize.add_argument("--keep-dense", action="append", default=None, metavar="MODULE",
                          help="keep this module's linear layers dense (repeatable; default: the model's policy)")
    quantize.add_argument("--revision", default=None, help="branch, tag or commit (default: the registry's)")
    quantize.set_defaults(run=_quantize)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except (imagetotext.ImageToTextError, UsageError) as error:
        print(f"imagetotext: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("imagetotext: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
