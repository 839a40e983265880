"""The ``imagetotext`` command: caption images from the shell.

    imagetotext caption [--model NAME] [--device DEV] [--json] PATH...
    imagetotext models
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import imagetotext


def _caption(args: argparse.Namespace) -> int:
    model = imagetotext.model_selector(args.model, device=args.device, test_delay=args.test_delay)
    failures = 0
    for path in args.paths:
        try:
            caption = model.extract(path)
        except (imagetotext.ImageToTextError, OSError) as error:
            # One bad file is reported and the batch goes on.
            failures += 1
            if args.json:
                print(json.dumps({"path": path, "error": str(error)}))
            else:
                print(f"{path}\terror: {error}", file=sys.stderr)
            continue
        print(json.dumps({"path": path, "caption": caption}) if args.json else f"{path}\t{caption}")
    return 1 if failures else 0


def _models(_: argparse.Namespace) -> int:
    rows = imagetotext.model_registry()
    header = ("name", "family", "repo_id", "revision", "quantization")
    widths = [max(len(h), *(len(row[h]) for row in rows)) for h in header]
    for values in [header, *[tuple(row[h] for h in header) for row in rows]]:
        print("  ".join(v.ljust(w) for v, w in zip(values, widths)).rstrip())
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="imagetotext", description="Caption images with small vision-language models.")
    parser.add_argument("--version", action="version", version=f"imagetotext {imagetotext.__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    caption = commands.add_parser("caption", help="caption image files")
    caption.add_argument("paths", nargs="+", metavar="PATH", help="image files")
    caption.add_argument("--model", default=imagetotext.default_model, choices=imagetotext.available_models,
                         metavar="NAME", help=f"model name (default {imagetotext.default_model}; see 'imagetotext models')")
    caption.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    caption.add_argument("--test-delay", type=float, default=0.0,
                         help="seconds the 'test' model sleeps per image (default 0 here; the service's is 1)")
    caption.add_argument("--json", action="store_true", help="one JSON object per line")
    caption.set_defaults(run=_caption)

    models = commands.add_parser("models", help="list every model name")
    models.set_defaults(run=_models)

    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except imagetotext.ImageToTextError as error:
        print(f"imagetotext: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
