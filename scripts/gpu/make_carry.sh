#!/usr/bin/env bash
# Run here (a machine with PyPI access), from the repo root: fills .device/h7 (git-ignored through
# .git/info/exclude) with what the device machine lacks and cannot download: the gguf and diskcache
# wheels, and llama-cpp-python's sdist stripped to ~8 MB (no .git packs, docs, vocab files, web UI,
# or backends other than CPU and CUDA). Then: run with carry [".device"] and
#   PIPELINE=pipeline_compare.sh bash scripts/gpu/launch.sh 555
set -euo pipefail
H7=.device/h7; VERSION=${LLAMA_CPP_PYTHON_VERSION:-0.3.36}
grep -qx "/.device/" .git/info/exclude 2>/dev/null || echo "/.device/" >> .git/info/exclude
mkdir -p $H7/whl
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux2014_x86_64 --platform any -d $H7/whl gguf==0.17.1 diskcache
tmp=$(mktemp -d)
python3 -m pip download -q --no-deps --no-binary=:all: -d "$tmp" "llama-cpp-python==$VERSION"
tar xzf "$tmp"/llama_cpp_python-$VERSION.tar.gz -C "$tmp"
src="$tmp/llama_cpp_python-$VERSION"; vendor="$src/vendor/llama.cpp"
find "$src" -name .git -prune -exec rm -rf {} +
rm -rf "$src/docs" "$vendor"/docs "$vendor"/examples "$vendor"/media "$vendor"/models/*.gguf* \
  "$vendor"/tools/server/public* "$vendor"/tools/ui "$vendor"/gguf-py/tests \
  "$vendor"/ggml/src/{ggml-sycl,ggml-vulkan,ggml-opencl,ggml-cann,ggml-webgpu,ggml-hexagon,ggml-zdnn,ggml-openvino,ggml-virtgpu}
tar czf $H7/llama_cpp_python-$VERSION-slim.tar.gz -C "$tmp" llama_cpp_python-$VERSION
rm -rf "$tmp"
du -sh $H7/*
