#!/usr/bin/env bash
# The whole test suite on a fresh machine: set up, build the wheel once (with the C++ tests in the same
# build tree), then CTest (C++) and pytest (Python, including the wheel in a fresh environment).
# GPU tests (CTest label / pytest marker `gpu`) skip without a CUDA device; scripts/gpu_check.sh runs
# them on the GPU machine.
set -euo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)
scripts/setup.sh
PY=.venv/bin/python

rm -rf dist
echo "== building the wheel and the C++ tests (build/py)"
IMAGETOTEXT_BUILD_TESTS=ON $PY -m pip wheel -q --no-build-isolation --no-deps -w dist -Cbuild-dir=build/py .
wheel=$(ls dist/imagetotext-*.whl)
$PY -m pip install -q --no-deps --force-reinstall "$wheel"

status=0
echo "== C++ tests (CTest)"
ctest --test-dir build/py --output-on-failure || status=1

echo "== Python tests (pytest)"
# Run from tests/ so `import imagetotext` finds the installed wheel, not python/ in the source tree.
(cd tests/python && IMAGETOTEXT_WHEEL="$PWD/../../$wheel" ../../$PY -m pytest) || status=1

echo "== test suite finished in $(( $(date +%s) - start )) s (status $status)"
exit $status
