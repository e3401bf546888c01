#!/usr/bin/env bash
# A short follow-up session to pipeline_session.sh: the page-locked checkpoint (pin_checkpoint).
# GPU tests of the new paths, then Qwen3-30B-A3B shapes at 8 GB: lazymoe with and without the
# checkpoint page-locked (uniform), and page-locked with the Zipf trace. No llama.cpp here.
# Run detached: PIPELINE=pipeline_pin.sh bash scripts/gpu/launch.sh 480 (carry [".device"]).
set -uo pipefail
R=${R:-/tmp/h7res}; M=${M:-/dev/shm/h7model}; H7=${H7:-.device/h7}; mkdir -p $R
COMMON="--prompt-tokens 32 --new-tokens 16 --repeats 3 --warmup 1 --timeout 300 --no-resident --temperature 1"
export PYTHONPATH="/tmp/h7site:$PWD" PYTHONUNBUFFERED=1
ts() { date -u +%T; }
log() { echo "pipeline: $* $(ts)"; }
bench() { local what=$1; shift; log "$what"; python3 -m lazymoe bench $COMMON "$@" 2>&1 | grep "^|"; }
Q=qwen3-30b-a3b
log start
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/h7site $H7/whl/*.whl
( python3 -m lazymoe.bench.writer $Q $M --only safetensors --device cuda 2>&1 | grep -v "it/s\]" | tail -1 ) &
WRITE=$!
timeout 200 python3 -m pytest -m gpu -q -p no:cacheprovider tests/gpu tests/test_store.py \
  -k "page_locked or pin or kernel or fused or triton or olmoe" > $R/gpu_tests_pin.log 2>&1
log "gpu tests rc=$? $(tail -1 $R/gpu_tests_pin.log)"
wait $WRITE; log "$Q safetensors written"
L="--engines lazymoe --model $M --placements gpu --budgets 8"
bench "$Q uniform 8 pinned" $L --pin-checkpoint --note "routing uniform" --out $R/$Q--uniform-8-pinned.json
bench "$Q uniform 8 not pinned" $L --note "routing uniform" --out $R/$Q--uniform-8.json
python3 -m lazymoe.bench.writer $Q $M --routing zipf --set-routing
bench "$Q zipf 8 pinned" $L --pin-checkpoint --note "routing zipf" --out $R/$Q--zipf-8-pinned.json
rm -rf $M
python3 scripts/gpu/merge_results.py $R $Q "bench-h200-$Q-pinned.json" "bash scripts/gpu/pipeline_pin.sh"
echo "PIPELINE DONE $(ts)"
