"""The command line's progress bars as a user sees them: the CLI runs under a pseudo-terminal (so stderr is a
terminal and tqdm draws) and the bytes it writes there are checked for tqdm's bar, for a batch caption and
for a download from the fake hub of test_hub.py. Without a terminal no bar is drawn (test_cli.py's output
checks would fail otherwise)."""

from __future__ import annotations

import fcntl
import os
import pty
import re
import select
import struct
import subprocess
import sys
import termios
import time

import pytest

import imagetotext
from conftest import needs_codecs
from test_cli import make_folder, run_cli
from test_hub import REPO, hub  # noqa: F401  (the fake hub fixture)

pytest.importorskip("tqdm")

# tqdm's default bar: " 40%|████      | 2/5 [00:00<00:00, 9.8image/s]"
BAR = re.compile(r"\d+%\|[^|\n]*\| *\d+(\.\d+)?[kMG]?i?B?/\d+(\.\d+)?[kMG]?i?B?")


def run_in_terminal(*args, env=None, timeout=60):
    """Runs `python -m imagetotext ARGS` with stdin, stdout and stderr on a pseudo-terminal (as `script` does); returns
    (exit status, everything written to the terminal)."""
    master, slave = pty.openpty()
    # A terminal window 100 columns wide: a pty starts at 0x0, where tqdm draws nothing (ncols 0).
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 100, 0, 0))
    process = subprocess.Popen([sys.executable, "-m", "imagetotext", *args], stdin=slave, stdout=slave, stderr=slave,
                               env={**os.environ, **(env or {})}, close_fds=True)
    os.close(slave)
    output = bytearray()
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.5)
            if not ready:
                if process.poll() is not None:
                    break
                continue
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the terminal's other side is closed
                break
            if not data:
                break
            output += data
        status = process.wait(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        if process.poll() is None:
            process.kill()
        os.close(master)
    return status, output.decode("utf-8", errors="replace")


@needs_codecs
def test_a_batch_caption_draws_a_tqdm_bar_on_a_terminal(tmp_path):
    folder = make_folder(tmp_path, count=5)
    status, screen = run_in_terminal("caption", "--model", "test", "--test-delay", "0.2", str(folder))
    assert status == 0, screen
    assert "meme_4.png" in screen
    bars = [match.group(0) for match in BAR.finditer(screen)]
    assert bars and bars[-1].startswith("100%|") and bars[-1].endswith("5/5"), screen
    assert "image/s" in screen or "s/image" in screen
    # Each caption line starts on a cleared line, never glued to the end of a bar.
    assert not re.search(r"\][^\r\n]*meme_\d\.png\t", screen), screen
    assert all(f"\r{folder}/meme_{i}.png\tTest description for meme_{i}\r\n" in screen for i in range(5)), screen
    # The same command off a terminal: captions only, no bar.
    piped = run_cli("caption", "--model", "test", str(folder))
    assert piped.returncode == 0 and not BAR.search(piped.stderr + piped.stdout)


@pytest.mark.skipif(not imagetotext._C.downloads_available(), reason="built without downloads")
def test_a_download_draws_a_tqdm_bar_per_file_on_a_terminal(hub, tmp_path):  # noqa: F811
    hub.mode = "slow"  # the weights arrive over about a second, so the bar is drawn in between
    env = {"HF_ENDPOINT": hub.endpoint, "HF_HUB_CACHE": str(tmp_path / "cache"), "HF_TOKEN": "", "HF_HUB_OFFLINE": "0"}
    status, screen = run_in_terminal("download", REPO, env=env)
    assert status == 0, screen
    lines = [line for line in re.split(r"[\r\n]", screen) if "model.safetensors" in line and BAR.search(line)]
    assert lines, screen
    assert any(re.search(r"\d[kM]/\d", line) for line in lines)  # bytes, scaled (293k/293k)


def test_quantize_draws_a_tqdm_bar_over_layers_on_a_terminal(tiny_smolvlm_checkpoint, tmp_path):
    status, screen = run_in_terminal("quantize", str(tiny_smolvlm_checkpoint), "--to", "int8", str(tmp_path / "out"))
    assert status == 0, screen
    bars = [match.group(0) for match in BAR.finditer(screen)]
    assert bars and bars[-1].startswith("100%|"), screen
    done, total = bars[-1].rsplit(" ", 1)[-1].split("/")
    assert done == total and int(total) > 0 and "quantizing to int8" in screen and "layer/s" in screen
