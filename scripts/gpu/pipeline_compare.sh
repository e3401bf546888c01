#!/usr/bin/env bash
# One machine, one session: lazymoe (CUDA-graph decode and the eager path) and llama.cpp --cpu-moe
# (llama-bench, built by CMake from the vendored source of llama-cpp-python's sdist) on the same
# random-weight model shapes (SHAPE, default qwen3-30b-a3b; also olmoe-1b-7b-shapes), BF16 for
# both, uniform then Zipf routing. PLACEMENTS=1 and BASELINES=1 add rows (see below).
# Run detached by scripts/gpu/launch.sh (PIPELINE=pipeline_compare.sh); watch with scripts/gpu/wait.sh.
# Needs .device/h7 carried: whl/ (gguf, diskcache) and llama_cpp_python-0.3.36-slim.tar.gz.
set -uo pipefail
R=${R:-/tmp/h7res}; M=${M:-/dev/shm/h7model}; H7=${H7:-.device/h7}; mkdir -p $R
SHAPE=${SHAPE:-qwen3-30b-a3b}; LB=/tmp/lb; SRC=/tmp/llama_src/llama_cpp_python-0.3.36
COMMON="--prompt-tokens 32 --new-tokens 16 --repeats 3 --warmup 1 --timeout 300 --no-resident --temperature 1"
LBARGS="-p 32 -n 16 -r 3 -o json"
export PYTHONPATH="/tmp/h7site:$PWD" PYTHONUNBUFFERED=1
ts() { date -u +%T; }
echo "pipeline: start $(ts)"
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/h7site $H7/whl/*.whl
mkdir -p /tmp/llama_src && tar xzf $H7/llama_cpp_python-0.3.36-slim.tar.gz -C /tmp/llama_src
# preparation (nothing is measured while the build runs): llama.cpp build and the safetensors
bash scripts/gpu/build_llama_bench.sh $SRC $LB $R/cmake.log &
BUILD=$!
python3 -m lazymoe.bench.writer $SHAPE $M --only safetensors --device cuda 2>&1 | grep -v "it/s\]" | tail -1
echo "pipeline: safetensors written $(ts)"
wait $BUILD; tail -1 $R/cmake.log; echo "pipeline: build done $(ts)"
# measurements, one at a time on a quiet machine
bash scripts/gpu/info.sh $R > $R/info.log 2>&1; echo "pipeline: info done $(ts)"
timeout 240 python3 -m pytest -m gpu -q -p no:cacheprovider tests/gpu -k "vram or graphs" > $R/gpu_tests.log 2>&1
echo "pipeline: gpu tests rc=$? $(tail -1 $R/gpu_tests.log) $(ts)"
run() { echo "pipeline: $1 $(ts)"; shift; python3 -m lazymoe bench --model $M $COMMON "$@" 2>&1 | grep "^|"; }
L="--engines lazymoe"
run "lazymoe uniform 8 gpu graphs+model" $L --budgets 8 --placements gpu --decodes auto model --note "routing uniform" --out $R/lazymoe_uniform_8.json
run "lazymoe uniform 5 12 gpu graphs" $L --budgets 5 12 --placements gpu --note "routing uniform" --out $R/lazymoe_uniform_5_12.json
if [ -n "${PLACEMENTS:-}" ]; then  # PLACEMENTS=1: the eager cpu/auto placements too
  run "lazymoe uniform 8 cpu auto" $L --budgets 8 --placements cpu auto --note "routing uniform" --out $R/lazymoe_uniform_8_cpu_auto.json
fi
if [ -n "${BASELINES:-}" ]; then  # BASELINES=1: transformers' full model and accelerate's offload
  run "transformers full + accelerate offload" --engines hf-full hf-offload --budgets 8 --note "routing uniform" --out $R/lazymoe_uniform_hf.json
fi
python3 -m lazymoe.bench.writer $SHAPE $M --routing zipf --set-routing
run "lazymoe zipf 8 gpu graphs+model" $L --budgets 8 --placements gpu --decodes auto model --note "routing zipf" --out $R/lazymoe_zipf_8.json
rm -rf $M

# llama.cpp: the same bits as GGUF
python3 -m lazymoe.bench.writer $SHAPE $M --only gguf --device cuda 2>&1 | tail -1
echo "pipeline: gguf written $(ts)"
G=$M/model-bf16.gguf
for routing in uniform zipf; do
  [ $routing = zipf ] && python3 -m lazymoe.bench.writer $SHAPE $M --routing zipf --set-routing
  echo "pipeline: llama-bench cpu-moe $routing $(ts)"
  $LB/bin/llama-bench -m $G -ngl 99 -ot "ffn_(up|down|gate)_exps=CPU" $LBARGS \
    > $R/llama_bench_cpumoe_$routing.json 2> $R/llama_bench_cpumoe_$routing.err; echo "rc=$?"
done
echo "pipeline: llama-bench all on GPU (zipf weights; routing does not change a dense-resident run) $(ts)"
$LB/bin/llama-bench -m $G -ngl 99 $LBARGS > $R/llama_bench_gpu_zipf.json 2> $R/llama_bench_gpu_zipf.err; echo "rc=$?"
python3 - <<PY
import glob, json
from lazymoe.bench import harness, report, llamabench
docs = [json.load(open(p)) for p in sorted(glob.glob("$R/lazymoe_*.json"))]
doc = harness.merge(docs, command="bash scripts/gpu/pipeline_compare.sh  (runs: " + " ; ".join(d["command"] for d in docs) + ")")
harness.save(doc, "$R/bench-$SHAPE.json")
for name, routing in [("cpumoe_uniform", "uniform"), ("cpumoe_zipf", "zipf"), ("gpu_zipf", "zipf")]:
    try:
        rows = llamabench.parse_llama_bench("$R/llama_bench_%s.json" % name, model="$SHAPE", routing=routing)
        cmd = "llama-bench -m model-bf16.gguf -ngl 99 %s$LBARGS" % ('-ot "ffn_(up|down|gate)_exps=CPU" ' if "cpumoe" in name else "")
        llamabench.merge_into("$R/bench-$SHAPE.json", rows, command=cmd, note="llama.cpp rows from its llama-bench binary (CMake build of the vendored source, sm_90), same GGUF bits")
    except Exception as e:
        print("llama-bench", name, "not merged:", e)
doc = json.load(open("$R/bench-$SHAPE.json"))
open("$R/table.md", "w").write(report.table(doc) + "\n")
print(report.table(doc))
PY
echo "PIPELINE DONE $(ts)"
