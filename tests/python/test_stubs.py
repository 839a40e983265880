"""Every public name has a docstring, and the extension's type stubs (_C.pyi) match the module."""

from __future__ import annotations

import ast
import inspect
import subprocess
import sys
from pathlib import Path

import pytest

import imagetotext
import imagetotext._C as native
from imagetotext import cli, errors, hub, model_init, quant, safetensors

ROOT = Path(__file__).resolve().parents[2]
STUB = ROOT / "python" / "imagetotext" / "_C.pyi"


def public_names(module):
    names = getattr(module, "__all__", None) or [n for n in vars(module) if not n.startswith("_")]
    return [n for n in names if not inspect.ismodule(getattr(module, n))]


@pytest.mark.parametrize("module", [imagetotext, model_init, errors, hub, quant, safetensors, native],
                         ids=lambda m: m.__name__)
def test_every_public_name_has_a_docstring(module):
    assert (module.__doc__ or "").strip(), module.__name__
    missing = []
    for name in public_names(module):
        value = getattr(module, name)
        if not (inspect.isclass(value) or callable(value)):
            continue  # constants are documented where they are defined
        if not (value.__doc__ or "").strip():
            missing.append(name)
        if inspect.isclass(value):
            for attribute, member in vars(value).items():
                if attribute.startswith("_"):
                    continue
                documented = member.fget if isinstance(member, property) else member
                if callable(documented) or isinstance(member, property):
                    if not (getattr(documented, "__doc__", None) or "").strip():
                        missing.append(f"{name}.{attribute}")
    assert missing == []


def test_cli_commands_have_help():
    parser = cli.build_parser()
    commands = next(a for a in parser._actions if a.dest == "command")
    assert set(commands.choices) == {"caption", "models", "download", "validate", "quantize"}
    for name, sub in commands.choices.items():
        assert sub.description or commands._choices_actions, name
        assert all(action.help for action in sub._actions if action.dest != "help"), name


def test_stubs_are_generated_from_the_current_module():
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "generate_stubs.py"), "--check"],
                            capture_output=True, text=True,
                            # the package under test: the source tree here, the installed wheel in CI
                            env={"PYTHONPATH": str(Path(imagetotext.__file__).resolve().parents[1]),
                                 "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stderr


def test_stubs_name_every_public_native_name_with_its_parameters():
    tree = ast.parse(STUB.read_text())
    stubbed = {}
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            stubbed.setdefault(node.name, []).append(node)
        elif isinstance(node, ast.AnnAssign):
            stubbed[node.target.id] = [node]
    assert set(stubbed) == {n for n in vars(native) if not n.startswith("_")}
    # Parameter names agree with what the module accepts: call each stubbed function's keywords by name.
    [selector] = stubbed["model_selector"]
    parameters = [a.arg for a in selector.args.args]
    assert parameters[:4] == ["model_name", "device", "dtype", "quantization"]
    [captioner] = stubbed["Captioner"]
    methods = {n.name for n in captioner.body if isinstance(n, ast.FunctionDef)}
    assert {"download", "extract", "extract_batch", "extract_pixels", "caption", "downloaded", "model_id"} <= methods
