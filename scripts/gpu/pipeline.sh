#!/usr/bin/env bash
# The benchmark on the device machine. Run detached and watch it with wait.sh:
#   mkdir -p /tmp/h7res; setsid nohup bash scripts/gpu/pipeline.sh > /tmp/h7res/pipeline.log 2>&1 &
#
# Qwen3-30B-A3B shapes, BF16, random weights (61 GB), kept in /dev/shm so neither engine reads disk.
# Only one of the two files exists at a time (RAM): the writer draws the same tensors from the same
# seed, so the GGUF (phase A, llama.cpp) and the safetensors (phase B, lazymoe) hold the same bits.
# Each phase runs uniform routing, then the same model with its router rows Zipf-scaled in place.
# llama.cpp is compiled (CUDA, sm_90) in the background while the GGUF is written.
set -uo pipefail
export PYTHONPATH="/tmp/h7site:$PWD" PYTHONUNBUFFERED=1
R=${R:-/tmp/h7res}; M=${M:-/dev/shm/h7model}; mkdir -p $R
SHAPE=${SHAPE:-qwen3-30b-a3b}
# --temperature 1: greedy decoding of random weights repeats one token, so every step would route
# alike (the first run here saw hit rates of 0.84-1.0 at "uniform" routing for that reason)
COMMON=${COMMON:---prompt-tokens 32 --new-tokens 16 --repeats 3 --warmup 1 --timeout 240 --no-resident --temperature 1}
DEVICE=${DEVICE:-cuda}; H7=${H7:-.device/h7}
ts() { date -u +%T; }
echo "pipeline: start $(ts)"
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/h7site $H7/whl/*.whl $H7/diskcache-*.whl
bash scripts/gpu/info.sh $R > $R/info.log 2>&1       # bandwidths first, on a quiet machine
if [ -z "${SKIP_SETUP:-}" ]; then bash scripts/gpu/setup.sh > $R/setup.log 2>&1 & else true & fi  # llama.cpp CUDA build, ~4-5 min
SETUP=$!
start=$(date +%s)
python3 -m lazymoe.bench.writer $SHAPE $M --only gguf --device $DEVICE || { echo "PIPELINE FAILED writer gguf"; exit 1; }
echo "pipeline: GGUF written in $(( $(date +%s) - start )) s ($(ts))"
wait $SETUP || { tail -20 $R/setup.log; echo "PIPELINE FAILED setup"; exit 1; }
tail -2 $R/setup.log 2>/dev/null
python3 -m lazymoe.bench.writer tiny-random /tmp/h7tiny --device $DEVICE > /dev/null
# the first smoke run saw llama.cpp workers die (SIGSEGV) on this machine: check, else diagnose + fall back
if timeout 120 python3 -X faulthandler -c "from lazymoe.bench.llamacpp import LlamaCppConfig as C, LlamaCppRunner as R
r = R(C('/tmp/h7tiny/model-bf16.gguf', cpu_moe=True)); print('tokens', list(r.stream(list(range(40, 60)), 4))); r.close()" > $R/llama_check.txt 2>&1; then
  echo "pipeline: llama.cpp low-level runner OK: $(grep tokens $R/llama_check.txt)"
else
  tail -5 $R/llama_check.txt
  timeout 300 python3 scripts/gpu/llama_diag.py /tmp/h7tiny/model-bf16.gguf > $R/llama_diag.txt 2>&1
  grep "^==" $R/llama_diag.txt
  export LAZYMOE_LLAMA_API=highlevel; echo "pipeline: low-level runner failed here: using api=highlevel"
fi
for routing in uniform zipf; do
  [ $routing = zipf ] && python3 -m lazymoe.bench.writer $SHAPE $M --routing zipf --set-routing
  echo "pipeline: llama.cpp $routing $(ts)"
  python3 -m lazymoe bench --model $M --engines llamacpp-cpu-moe $COMMON \
    --note "random weights, shapes of $SHAPE, routing $routing" --out $R/llama_$routing.json
  if ! python3 -c "import json, sys; sys.exit(0 if all(r['ok'] for r in json.load(open('$R/llama_$routing.json'))['results']) else 1)"; then
    echo "pipeline: llama.cpp row failed; again with api=highlevel and no sampler thread"
    mv $R/llama_$routing.json $R/failed_llama_$routing.json.txt
    LAZYMOE_LLAMA_API=highlevel LAZYMOE_BENCH_SAMPLER=0 python3 -m lazymoe bench --model $M --engines llamacpp-cpu-moe $COMMON \
      --note "random weights, shapes of $SHAPE, routing $routing; llama.cpp through llama_cpp.Llama, peaks sampled at start and end" \
      --out $R/llama_$routing.json
  fi
done
rm -f $M/*.gguf
start=$(date +%s)
python3 -m lazymoe.bench.writer $SHAPE $M --only safetensors --device $DEVICE || { echo "PIPELINE FAILED writer st"; exit 1; }
echo "pipeline: safetensors written in $(( $(date +%s) - start )) s ($(ts))"
free -g | head -2
echo "pipeline: lazymoe uniform $(ts)"
python3 -m lazymoe bench --model $M --engines lazymoe --budgets 8 --placements gpu auto cpu $COMMON \
  --note "routing uniform" --out $R/lazymoe_uniform_8.json
python3 -m lazymoe bench --model $M --engines lazymoe --budgets 5 12 --placements gpu $COMMON \
  --note "routing uniform" --out $R/lazymoe_uniform_5_12.json
python3 -m lazymoe.bench.writer $SHAPE $M --routing zipf --set-routing
echo "pipeline: lazymoe zipf $(ts)"
python3 -m lazymoe bench --model $M --engines lazymoe --budgets 8 --placements gpu auto $COMMON \
  --note "routing zipf" --out $R/lazymoe_zipf_8.json
python3 - <<PY
import glob, json
from lazymoe.bench import harness, report
docs = [json.load(open(p)) for p in sorted(glob.glob("$R/llama_*.json")) + sorted(glob.glob("$R/lazymoe_*.json"))]
doc = harness.merge(docs, command="bash scripts/gpu/pipeline.sh  (runs: " + " ; ".join(d["command"] for d in docs) + ")")
harness.save(doc, "$R/bench-$SHAPE.json")
open("$R/table.md", "w").write(report.table(doc) + "\n")
print(report.table(doc))
PY
echo "PIPELINE DONE $(ts)"
