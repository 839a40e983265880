#!/usr/bin/env bash
# Sets the machine up (scripts/setup.sh) and installs imagetotext into .venv: the Python package, the
# `imagetotext` command and the C++ package (find_package(ImageToText) with
# CMAKE_PREFIX_PATH=$(.venv/bin/python -c 'import imagetotext, os; print(os.path.dirname(imagetotext.__file__))')).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
# --no-build-isolation: build against the torch in .venv, the one the extension will load with.
.venv/bin/python -m pip install -q --no-build-isolation --no-deps -Cbuild-dir=build/install .
.venv/bin/python -c "import imagetotext; print('installed imagetotext', imagetotext.__version__)"
