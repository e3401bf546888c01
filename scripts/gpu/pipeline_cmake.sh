#!/usr/bin/env bash
# The benchmark on the device machine with llama.cpp built by CMake from the vendored source of the
# carried llama-cpp-python sdist (its Python package is used as is, pointed at the new libraries
# with LLAMA_CPP_LIB_PATH). The pip-built wheel segfaulted on load on this machine in every mode
# (data/results/h100-llama-diag.txt); this script checks the CMake build, its llama-bench, and the
# Python bindings, and gets a native backtrace (cuda-gdb) of any crash.
# Run detached:  setsid nohup bash scripts/gpu/pipeline_cmake.sh > /tmp/h7res/pipeline.log 2>&1 &
set -uo pipefail
R=${R:-/tmp/h7res}; M=${M:-/dev/shm/h7model}; H7=${H7:-.device/h7}; mkdir -p $R
SHAPE=${SHAPE:-qwen3-30b-a3b}; LB=/tmp/lb; SRC=/tmp/llama_src/llama_cpp_python-0.3.36
COMMON=${COMMON:---prompt-tokens 32 --new-tokens 16 --repeats 3 --warmup 1 --timeout 240 --no-resident --temperature 1}
export PYTHONPATH="/tmp/h7site:$SRC:$PWD" PYTHONUNBUFFERED=1 LLAMA_CPP_LIB_PATH=$LB/bin
ts() { date -u +%T; }
echo "pipeline: start $(ts)"
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/h7site $H7/whl/*.whl $H7/diskcache-*.whl
mkdir -p /tmp/llama_src && tar xzf $H7/llama_cpp_python-0.3.36-slim.tar.gz -C /tmp/llama_src
( cmake -S $SRC/vendor/llama.cpp -B $LB -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_C_FLAGS=-g -DCMAKE_CXX_FLAGS=-g \
    -DGGML_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90 -DBUILD_SHARED_LIBS=ON -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF \
    -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF ${LLAMA_CMAKE_EXTRA:-} > $R/cmake.log 2>&1 \
  && cmake --build $LB -j ${BUILD_JOBS:-13} --target llama llama-bench >> $R/cmake.log 2>&1; echo "build rc=$?" >> $R/cmake.log ) &
BUILD=$!
bash scripts/gpu/info.sh $R > $R/info.log 2>&1
timeout 300 python3 scripts/gpu/profile_decode.py --layers 8 --hf --out $R/profile.json > $R/profile.log 2>&1
echo "pipeline: profile rc=$? $(ts)"; rm -rf /dev/shm/prof
wait $BUILD; tail -3 $R/cmake.log; ls $LB/bin | head -20
python3 -m lazymoe.bench.writer tiny-random /tmp/h7tiny --device cuda > /dev/null
T=/tmp/h7tiny/model-bf16.gguf
$LB/bin/llama-bench -m $T -ngl 99 -p 16 -n 8 -r 2 -o json > $R/lb_tiny_gpu.json 2> $R/lb_tiny_gpu.err; echo "llama-bench tiny gpu rc=$?"
$LB/bin/llama-bench -m $T -ngl 99 -ot "ffn_(up|down|gate)_exps=CPU" -p 16 -n 8 -r 2 -o json > $R/lb_tiny_cpumoe.json 2> $R/lb_tiny_cpumoe.err; echo "llama-bench tiny cpu-moe rc=$?"
CHECK="from lazymoe.bench.llamacpp import LlamaCppConfig as C, LlamaCppRunner as R
r = R(C('$T', cpu_moe=True)); print('tokens', list(r.stream(list(range(40, 60)), 4))); r.close()"
LLAMA_OK=""
if timeout 120 python3 -X faulthandler -c "$CHECK" > $R/py_check.txt 2>&1; then
  LLAMA_OK=python; echo "pipeline: python bindings on the CMake build OK: $(grep tokens $R/py_check.txt)"
else
  echo "pipeline: python bindings crashed; backtrace:"
  LAZYMOE_LLAMA_LOG=stderr timeout 180 cuda-gdb -q -batch -ex "set pagination off" -ex run -ex bt -ex "info sharedlibrary" \
    --args python3 -c "$CHECK" > $R/gdb.txt 2>&1; grep -A25 "SIGSEGV" $R/gdb.txt | head -40
  LIBSTD=$(g++ -print-file-name=libstdc++.so.6 2>/dev/null)
  if LD_PRELOAD=$LIBSTD timeout 120 python3 -c "$CHECK" > $R/py_check_preload.txt 2>&1; then
    export LD_PRELOAD=$LIBSTD; LLAMA_OK=python; echo "pipeline: OK with LD_PRELOAD=$LIBSTD"
  elif [ -s $R/lb_tiny_cpumoe.json ]; then LLAMA_OK=binary; fi
fi
echo "pipeline: llama.cpp via: ${LLAMA_OK:-none} $(ts)"
[ -z "$LLAMA_OK" ] && { echo "PIPELINE FAILED llama.cpp"; exit 1; }
python3 -m lazymoe.bench.writer $SHAPE $M --only gguf --device cuda | tail -1
for routing in uniform zipf; do
  [ $routing = zipf ] && python3 -m lazymoe.bench.writer $SHAPE $M --routing zipf --set-routing
  echo "pipeline: llama.cpp $routing $(ts)"
  if [ $LLAMA_OK = python ]; then
    python3 -m lazymoe bench --model $M --engines llamacpp-cpu-moe $COMMON \
      --note "random weights, shapes of $SHAPE, routing $routing; llama.cpp built by CMake (Release, sm_90) from llama-cpp-python 0.3.36's vendored source" \
      --out $R/llama_$routing.json 2>&1 | grep "^|"
  fi
  $LB/bin/llama-bench -m $M/model-bf16.gguf -ngl 99 -ot "ffn_(up|down|gate)_exps=CPU" -p 32 -n 16 -r 3 -o json \
    > $R/llama_bench_cpumoe_$routing.json 2> $R/llama_bench_cpumoe_$routing.err; echo "llama-bench cpu-moe $routing rc=$?"
done
echo "PIPELINE DONE $(ts)"
