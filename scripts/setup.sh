#!/usr/bin/env bash
# Installs everything imagetotext needs on a fresh Debian 12 machine: the system libraries (apt) and a
# Python environment in .venv with torch, the build tools and the test tools. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(
  build-essential cmake ninja-build pkg-config
  libopencv-core-dev libopencv-imgproc-dev libopencv-imgcodecs-dev  # image decoding (JPEG, PNG, BMP, WebP, TIFF)
  libgif-dev                                                        # GIF, which OpenCV 4.6 cannot read
  libcurl4-openssl-dev libssl-dev                                   # hub downloads and their SHA-256
  nlohmann-json3-dev                                                # checkpoint headers and indexes (header-only)
  libpcre2-dev                                                      # the tokenizers' Unicode pre-tokenizer regexes
  catch2                                                            # C++ tests (2.13 here, 3.x also works)
)
missing=()
for package in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done
if [ ${#missing[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "setup: installing ${missing[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip uv
.venv/bin/uv pip install -q --python .venv/bin/python -r requirements-dev.txt
echo "setup: $(.venv/bin/python -c 'import torch; print("torch", torch.__version__, "CUDA", torch.version.cuda)')," \
     "nvcc: $(command -v nvcc || echo none)"
