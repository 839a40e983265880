#!/usr/bin/env bash
# The GPU machine's build and test run, in one call (see docs/gpu.md):
#   - builds the wheel with the CUDA kernels for sm_90 and the C++ tests, with file decoding left out
#     (that machine has no OpenCV C++; GPU tests feed decoded pixels),
#   - runs every CTest test (the gpu label included) and the pytest suite (gpu-marked tests included),
#   - GPU_CHECK_PYTEST_ARGS adds pytest arguments (say, -k to run a subset, or test files),
#   - GPU_CHECK_CTEST=0 skips the C++ tests (and their build), to save device time on kernel-only runs,
#   - GPU_CHECK_BENCH=1 runs the benchmarks into $OUT: bench_quant_gemm.py (GPU_CHECK_BENCH_ARGS adds its
#     arguments), bench_florence2.py and bench_smolvlm.py (each with its profile), and the batch figures (images per
#     second: "batch"); or name some: "smolvlm florence2 batch"; a name with "-plain" ("smolvlm-plain") runs that
#     benchmark with IMAGETOTEXT_OVERLAP_LAUNCHES=0 (plain launches, src/ops/cuda/launch.cuh) for comparison,
#     and a name with "-baseline" ("smolvlm-baseline") runs it on the wheel built from the source tree in
#     GPU_CHECK_BASELINE (an earlier commit, unpacked beside the checkout with
#     `git archive COMMIT | tar -x -C DIR`, so it travels with the call), results in *_baseline_h100*: a change
#     measured against its parent in one run,
#   - writes the log to $OUT/gpu_check.log (or build/gpu_check.log).
# Needs there: python3 with torch (CUDA), scikit-build-core, pybind11 matching torch's, CMake, nvcc and
# Catch2; carry .whl (the pybind11 wheel) and .deps (nlohmann-json and PCRE2 packages): docs/gpu.md.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-build}
mkdir -p "$out"
log="$out/gpu_check.log"
exec > >(tee "$log") 2>&1

# What the machine lacks travels with the call (docs/gpu.md): Python wheels in .whl/, Debian packages
# (header-only or self-contained libraries) in .deps/, unpacked into /tmp/deps.
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
if ls .deps/*.deb >/dev/null 2>&1; then
  for deb in .deps/*.deb; do dpkg -x "$deb" /tmp/deps; done
  export CMAKE_PREFIX_PATH=/tmp/deps/usr${CMAKE_PREFIX_PATH:+:$CMAKE_PREFIX_PATH}
  export PKG_CONFIG_PATH=/tmp/deps/usr/lib/x86_64-linux-gnu/pkgconfig${PKG_CONFIG_PATH:+:$PKG_CONFIG_PATH}
  export LD_LIBRARY_PATH=/tmp/deps/usr/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
fi
# No OpenCV C++ there; downloads only where libcurl's and OpenSSL's headers are installed.
export IMAGETOTEXT_WITH_IMAGE_CODECS=OFF
if [ -f /usr/include/curl/curl.h ] && [ -f /usr/include/openssl/evp.h ]; then
  export IMAGETOTEXT_WITH_DOWNLOADS=ON
else
  export IMAGETOTEXT_WITH_DOWNLOADS=OFF
fi
# The image's default compiler (/opt/gcc/bin/g++, a wrapper) links libstdc++ statically into shared
# libraries; a second libstdc++ inside libimagetotext.so crashes the first time it formats a number in
# a Python process. The distribution's g++ links the shared libstdc++ as torch does.
if [ -x /usr/bin/g++ ]; then
  export CXX=/usr/bin/g++ CC=/usr/bin/gcc CUDAHOSTCXX=/usr/bin/g++
fi
echo "== machine"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
python3 -c "import torch, pybind11, scikit_build_core as s; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0)); print('pybind11', pybind11.__version__, 'scikit-build-core', s.__version__)"
nvcc --version | tail -2
cmake --version | head -1
"${CXX:-c++}" --version | head -1

echo "== build (wheel + C++ tests, CUDA sm_90, no image codecs, downloads $IMAGETOTEXT_WITH_DOWNLOADS)"
start=$(date +%s)
rm -rf build/gpu build/gpu-dist build/gpu-site
build_tests=ON
[ "${GPU_CHECK_CTEST:-1}" = 0 ] && build_tests=OFF
IMAGETOTEXT_BUILD_TESTS=$build_tests IMAGETOTEXT_CUDA_ARCHITECTURES=90 \
  python3 -m pip wheel -q --no-build-isolation --no-deps -w build/gpu-dist -Cbuild-dir=build/gpu . || exit 1
echo "build took $(( $(date +%s) - start )) s"
python3 -m pip install -q --no-deps --no-compile --target build/gpu-site build/gpu-dist/imagetotext-*.whl || exit 1
cuobjdump --list-elf build/gpu/libimagetotext.so | head -5
if nm -D --defined-only build/gpu/libimagetotext.so | grep -q "_ZNKSt6locale2id5_M_idEv"; then
  echo "error: libimagetotext.so carries its own copy of libstdc++ (see the compiler note above)"; exit 1
fi

status=0
if [ "$build_tests" = ON ]; then
  echo "== CTest (all labels, gpu included)"
  ctest --test-dir build/gpu --output-on-failure || status=1
fi
echo "== pytest (gpu-marked tests included)"
(cd tests/python && PYTHONPATH="$PWD/../../build/gpu-site${PYTHONPATH:+:$PYTHONPATH}" python3 -m pytest -v -m "not slow" \
   -p no:cacheprovider ${GPU_CHECK_PYTEST_ARGS:-}) || status=1
# GPU_CHECK_BENCH: 1 (all) or a list of quant, florence2, smolvlm, batch (images per second of both families).
bench=${GPU_CHECK_BENCH:-0}
[ "$bench" = 1 ] && bench="quant florence2 smolvlm batch"
current_site="$PWD/build/gpu-site${PYTHONPATH:+:$PYTHONPATH}"
if [ -n "${GPU_CHECK_BASELINE:-}" ]; then
  echo "== build of the baseline in $GPU_CHECK_BASELINE (wheel, no tests)"
  rm -rf build/gpu-baseline build/gpu-baseline-dist build/gpu-baseline-site
  (cd "$GPU_CHECK_BASELINE" && IMAGETOTEXT_BUILD_TESTS=OFF IMAGETOTEXT_CUDA_ARCHITECTURES=90 python3 -m pip wheel -q \
     --no-build-isolation --no-deps -w "$OLDPWD/build/gpu-baseline-dist" -Cbuild-dir="$OLDPWD/build/gpu-baseline" .) &&
    python3 -m pip install -q --no-deps --no-compile --target build/gpu-baseline-site build/gpu-baseline-dist/imagetotext-*.whl ||
    status=1
fi
for item in $([ "$bench" = 0 ] || echo "$bench"); do
  # NAME-plain: the same benchmark with plain (not overlapped) kernel launches, results in *_plain_h100*;
  # NAME-baseline: on the baseline's wheel, results in *_baseline_h100*.
  name=${item%-plain} plain="" site=$current_site
  if [ "$name" != "$item" ]; then plain=_plain; export IMAGETOTEXT_OVERLAP_LAUNCHES=0; else unset IMAGETOTEXT_OVERLAP_LAUNCHES; fi
  if [ "${name%-baseline}" != "$name" ]; then
    name=${name%-baseline} plain=_baseline site="$PWD/build/gpu-baseline-site${PYTHONPATH:+:$PYTHONPATH}"
  fi
  case $name in
    quant)
      echo "== benchmark: quantized GEMM (benchmarks/bench_quant_gemm.py)"
      PYTHONPATH="$site" python3 benchmarks/bench_quant_gemm.py --out "$out/quant_gemm${plain}_h100.md" ${GPU_CHECK_BENCH_ARGS:-} \
        || status=1 ;;
    florence2)
      echo "== benchmark: Florence-2 base/large, ours next to transformers bf16 (benchmarks/bench_florence2.py)"
      PYTHONPATH="$site" python3 benchmarks/bench_florence2.py --profile "$out/florence2${plain}_profile_h100.txt" \
        | tee "$out/florence2${plain}_h100.md" || status=1 ;;
    smolvlm)
      echo "== benchmark: SmolVLM 256M/500M, ours next to transformers bf16, and a profile (benchmarks/bench_smolvlm.py)"
      PYTHONPATH="$site" python3 benchmarks/bench_smolvlm.py --out "$out/smolvlm${plain}_h100.md" \
        --profile "$out/smolvlm${plain}_profile_h100.txt" || status=1 ;;
    batch)
      echo "== benchmark: batches of 8 meme-sized images, images per second (bench_florence2.py, bench_smolvlm.py --batch 8)"
      PYTHONPATH="$site" python3 benchmarks/bench_florence2.py base --batch 8 | tee "$out/florence2${plain}_batch_h100.md" \
        || status=1
      PYTHONPATH="$site" python3 benchmarks/bench_smolvlm.py --models 256M --batch 8 --distinct \
        --out "$out/smolvlm${plain}_batch_h100.md" || status=1 ;;
    *) echo "unknown benchmark '$name'"; status=1 ;;
  esac
done
echo "== gpu_check finished with status $status"
exit $status
