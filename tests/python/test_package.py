"""The built wheel in a fresh virtual environment, and the C++ package it carries.

scripts/test.sh builds the wheel and sets IMAGETOTEXT_WHEEL; run alone, these tests skip.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
WHEEL = os.environ.get("IMAGETOTEXT_WHEEL")


def run(*cmd, **kwargs):
    result = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=1200, **kwargs)
    assert result.returncode == 0, f"{cmd} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout


@pytest.fixture(scope="module")
def fresh_env(tmp_path_factory):
    if not WHEEL:
        pytest.skip("IMAGETOTEXT_WHEEL is not set (scripts/test.sh builds the wheel and sets it)")
    assert Path(WHEEL).is_file(), WHEEL
    env_dir = tmp_path_factory.mktemp("fresh") / "venv"
    uv = shutil.which("uv") or str(Path(sys.executable).with_name("uv"))
    run(uv, "venv", "-q", "--python", sys.executable, env_dir)
    python = env_dir / "bin" / "python"
    # A real install: the wheel's own dependency (torch) is resolved from the index (uv's cache makes
    # the second install of the same torch quick).
    run(uv, "pip", "install", "-q", "--python", python, WHEEL)
    return env_dir


def test_wheel_imports_and_captions_in_a_fresh_environment(fresh_env, tmp_path):
    image = tmp_path / "fresh_meme.png"
    Image.new("RGB", (16, 9), (200, 100, 50)).save(image)
    python = fresh_env / "bin" / "python"
    code = (
        "import imagetotext, sys; "
        "m = imagetotext.model_selector('test', test_delay=0); "
        "print(imagetotext.__file__); print(m.extract(sys.argv[1]))"
    )
    out = run(python, "-c", code, image, cwd=tmp_path).splitlines()
    assert str(fresh_env) in out[0]  # imported from the fresh environment, not the source tree
    assert out[1] == "Test description for fresh_meme"
    cli = run(fresh_env / "bin" / "imagetotext", "caption", "--model", "test", image)
    assert cli.strip() == f"{image}\tTest description for fresh_meme"
    # The shipped tensor shapes (imagetotext/model_shapes) are in the wheel: memory without any checkpoint.
    models = json.loads(run(fresh_env / "bin" / "imagetotext", "models", "--json",
                            env={**os.environ, "HF_HUB_CACHE": str(tmp_path / "empty-hub"), "HF_HUB_OFFLINE": "1"}))
    florence = next(row for row in models if row["name"] == "Florence-2-base")
    assert florence["computed_weight_bytes"] > 0 and florence["measured_weights"] == "not cached"


def test_the_wheel_carries_a_cmake_package(fresh_env, tmp_path):
    python = fresh_env / "bin" / "python"
    prefix = run(python, "-c", "import imagetotext, os; print(os.path.dirname(imagetotext.__file__))").strip()
    torch_dir = run(python, "-c", "import torch.utils; print(torch.utils.cmake_prefix_path)").strip()
    build = tmp_path / "consumer"
    run("cmake", "-S", ROOT / "tests" / "consumer", "-B", build, "-G", "Ninja", "-DCMAKE_BUILD_TYPE=Release",
        f"-DCMAKE_PREFIX_PATH={prefix}", f"-DTorch_DIR={torch_dir}/Torch")
    run("cmake", "--build", build)
    assert "consumer caption: Test description for consumer-image" in run(build / "consumer")
