#!/usr/bin/env bash
# Build llama.cpp's llama-bench and its shared libraries (CUDA, sm_90) from the vendored source in
# the carried llama-cpp-python sdist: bash scripts/gpu/build_llama_bench.sh SRC BUILD_DIR LOG.
# The pipelines start it in the background while they write the model, and measure nothing meanwhile.
SRC=$1; LB=$2; LOG=$3
cmake -S $SRC/vendor/llama.cpp -B $LB -G Ninja -DCMAKE_BUILD_TYPE=Release \
  -DGGML_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90 -DBUILD_SHARED_LIBS=ON -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF \
  -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF > $LOG 2>&1 \
  && cmake --build $LB -j ${BUILD_JOBS:-14} --target llama-bench >> $LOG 2>&1
echo "build rc=$?" >> $LOG
