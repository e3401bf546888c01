#!/usr/bin/env bash
# Issue 8's measurements on one GPU machine in one device session, most important first, so a
# session that runs out of time still brings back the head of the list:
#   1. the GPU test suite (token identity with transformers, VRAM budgets, the Triton kernels)
#   2. Qwen3-30B-A3B shapes, BF16, 8 GB: lazymoe (CUDA graphs with the fused Triton kernel and
#      with the gather + bmm kernel; eager) then llama.cpp --cpu-moe (llama-bench) on a GGUF of
#      the same tensors; uniform routing, then the Zipf trace
#   3. OLMoE-1B-7B shapes, BF16, uniform: the harness with every engine it has (lazymoe at 2/5/8/12
#      GB and each placement, llama.cpp through llama-cpp-python's own Python package over the
#      libraries built here, transformers' full model, accelerate offload), then llama-bench
#   4. extras: Qwen3 at 5 and 12 GB
# Run detached: PIPELINE=pipeline_session.sh bash scripts/gpu/launch.sh 555 (carry [".device"]);
# then bash scripts/gpu/wait.sh until "PIPELINE DONE". Results: /tmp/h7res, packed by wait.sh.
set -uo pipefail
R=${R:-/tmp/h7res}; M=${M:-/dev/shm/h7model}; H7=${H7:-.device/h7}; mkdir -p $R
LB=/tmp/lb; SRC=/tmp/llama_src/llama_cpp_python-0.3.36; SITE=/tmp/h7site
COMMON="--prompt-tokens 32 --new-tokens 16 --repeats 3 --warmup 1 --timeout 300 --no-resident --temperature 1"
LBARGS="-p 32 -n 16 -r 3 -o json"
export PYTHONPATH="$SITE:$PWD" PYTHONUNBUFFERED=1
ts() { date -u +%T; }
log() { echo "pipeline: $* $(ts)"; }
bench() { local what=$1; shift; log "$what"; python3 -m lazymoe bench $COMMON "$@" 2>&1 | grep "^|"; }
llama_bench() {  # name gguf routing [extra llama-bench args]
  local name=$1 gguf=$2; shift 2
  log "llama-bench $name"
  timeout 300 $LB/bin/llama-bench -m $gguf -ngl 99 "$@" $LBARGS > $R/llama_bench_$name.json 2> $R/llama_bench_$name.err
  echo "rc=$?"
}
merge() {  # shape: its lazymoe documents and llama-bench outputs in one file, one table
  python3 scripts/gpu/merge_results.py $R "$1" "bench-h200-$1.json" "bash scripts/gpu/pipeline_session.sh"
}

log start
python3 -m pip install -q --no-index --no-deps --no-compile --target $SITE $H7/whl/*.whl
mkdir -p /tmp/llama_src && tar xzf $H7/llama_cpp_python-0.3.36-slim.tar.gz -C /tmp/llama_src
# preparation, nothing measured meanwhile: llama.cpp (llama-bench and the shared libraries) and the
# Qwen3 safetensors
bash scripts/gpu/build_llama_bench.sh $SRC $LB $R/cmake.log &
BUILD=$!
Q=qwen3-30b-a3b; O=olmoe-1b-7b-shapes
python3 -m lazymoe.bench.writer $Q $M --only safetensors --device cuda 2>&1 | grep -v "it/s\]" | tail -1
log "$Q safetensors written"
wait $BUILD; tail -1 $R/cmake.log; log "build done"
# llama-cpp-python's Python package over the libraries this build made (its own wheel's libraries
# crashed on load on these machines: data/results/h100-llama-diag.txt)
cp -r $SRC/llama_cpp $SITE/ && ln -sfn $LB/bin $SITE/llama_cpp/lib

# 1. tests
bash scripts/gpu/info.sh $R > $R/info.log 2>&1; log "info done"
timeout 420 python3 -m pytest -m gpu -q -p no:cacheprovider -n 4 tests/gpu > $R/gpu_tests.log 2>&1
log "gpu tests rc=$? $(tail -1 $R/gpu_tests.log)"

# 2. Qwen3-30B-A3B shapes at 8 GB
L="--engines lazymoe --model $M --placements gpu"
bench "$Q uniform 8 graphs fused+batched" $L --budgets 8 --kernels auto batched --note "routing uniform" --out $R/$Q--uniform-8.json
bench "$Q uniform 8 eager" $L --budgets 8 --decodes model --note "routing uniform" --out $R/$Q--uniform-8-model.json
python3 -m lazymoe.bench.writer $Q $M --routing zipf --set-routing
bench "$Q zipf 8 graphs fused+batched" $L --budgets 8 --kernels auto batched --note "routing zipf" --out $R/$Q--zipf-8.json
rm -rf $M
python3 -m lazymoe.bench.writer $Q $M --only gguf --device cuda 2>&1 | tail -1; log "$Q gguf written"
llama_bench $Q--cpumoe-uniform $M/model-bf16.gguf -ot "ffn_(up|down|gate)_exps=CPU"
python3 -m lazymoe.bench.writer $Q $M --routing zipf --set-routing
llama_bench $Q--cpumoe-zipf $M/model-bf16.gguf -ot "ffn_(up|down|gate)_exps=CPU"
rm -rf $M
merge $Q

# 3. OLMoE-1B-7B shapes, uniform: safetensors and GGUF side by side, the whole harness
python3 -m lazymoe.bench.writer $O $M --device cuda 2>&1 | grep -v "it/s\]" | tail -1; log "$O written"
L="--model $M"
bench "$O lazymoe gpu 2 5 8 12" $L --engines lazymoe --placements gpu --budgets 2 5 8 12 --note "routing uniform" --out $R/$O--lazymoe-gpu.json
bench "$O lazymoe cpu auto 5" $L --engines lazymoe --placements cpu auto --budgets 5 --note "routing uniform" --out $R/$O--lazymoe-cpu-auto.json
bench "$O llama.cpp (bindings), transformers, accelerate" $L --engines llamacpp-cpu-moe llamacpp-gpu hf-full hf-offload \
  --budgets 5 --note "routing uniform" --out $R/$O--others.json
llama_bench $O--cpumoe-uniform $M/model-bf16.gguf -ot "ffn_(up|down|gate)_exps=CPU"
llama_bench $O--gpu-uniform $M/model-bf16.gguf
rm -rf $M
merge $O

# 4. extras
python3 -m lazymoe.bench.writer $Q $M --only safetensors --device cuda 2>&1 | grep -v "it/s\]" | tail -1
bench "$Q uniform 5 12" --engines lazymoe --model $M --placements gpu --budgets 5 12 --note "routing uniform" --out $R/$Q--uniform-5-12.json
rm -rf $M
merge $Q
echo "PIPELINE DONE $(ts)"
