#!/usr/bin/env bash
# On the device machine (no network): make `python3` able to run lazymoe.bench with a CUDA llama.cpp.
#   - gguf (not in the image) from the carried wheel folder
#   - llama-cpp-python: the CUDA wheel brought back by an earlier run (pieces *.whl.part*), else a
#     build from the carried, slimmed sdist (~4 min on 16 cores); the new wheel is split into $OUT.
# Carry: .device/h7 (sdist, diskcache and gguf wheels, wheel pieces). Run from the repository root.
set -euo pipefail
H7=${H7:-.device/h7}
SITE=/tmp/h7site
mkdir -p "$SITE"
python3 -m pip install -q --no-index --no-deps --no-compile --target "$SITE" "$H7"/whl/*.whl "$H7"/diskcache-*.whl
export PYTHONPATH="$SITE:$PWD"
if python3 -c "import llama_cpp, sys; sys.exit(0 if llama_cpp.llama_supports_gpu_offload() else 1)" 2>/dev/null; then
  echo "setup: llama-cpp-python with GPU offload already importable"; exit 0
fi
VERSION=${LLAMA_VERSION:-0.3.36}  # the carried sdist's version
WHEEL=llama_cpp_python-$VERSION-cp312-cp312-linux_x86_64.whl
if ls "$H7"/wheel/$WHEEL.part* >/dev/null 2>&1; then
  cat "$H7"/wheel/$WHEEL.part* > /tmp/$WHEEL
  echo "setup: using the carried CUDA wheel"
else
  echo "setup: building llama-cpp-python $VERSION with CUDA (sm_90) ${LLAMA_CMAKE_EXTRA:-}"
  start=$(date +%s)
  rm -rf /tmp/llama_src && mkdir -p /tmp/llama_src /tmp/llama_wheel
  tar xzf "$H7"/llama_cpp_python-$VERSION-slim.tar.gz -C /tmp/llama_src
  # LLAMA_CMAKE_EXTRA: e.g. -DGGML_NATIVE=OFF, to try when the build crashes on load (see data/results)
  CMAKE_ARGS="-DGGML_CUDA=on -DCMAKE_CUDA_ARCHITECTURES=90 -DLLAVA_BUILD=off ${LLAMA_CMAKE_EXTRA:-}" \
  CMAKE_BUILD_PARALLEL_LEVEL=${BUILD_JOBS:-$(nproc)} \
    python3 -m pip wheel -q --no-build-isolation --no-deps -w /tmp/llama_wheel /tmp/llama_src/llama_cpp_python-$VERSION
  cp /tmp/llama_wheel/*.whl /tmp/$WHEEL
  echo "setup: built in $(( $(date +%s) - start )) s: $(ls -la /tmp/$WHEEL)"
  if [ -n "${OUT:-}" ]; then mkdir -p "$OUT/wheel" && split -b 15M -d /tmp/$WHEEL "$OUT/wheel/$WHEEL.part"; fi
fi
python3 -m pip install -q --no-index --no-deps --no-compile --target "$SITE" /tmp/$WHEEL
python3 -c "import llama_cpp; print('setup: llama_cpp', llama_cpp.__version__, 'gpu offload:', llama_cpp.llama_supports_gpu_offload())"
