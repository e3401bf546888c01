#!/usr/bin/env bash
# lazymoe rows only (no llama.cpp build), Qwen3-30B-A3B shapes, BF16 random weights in /dev/shm,
# VRAM budget 8 GB, uniform routing (seeded sampling at temperature 1) then Zipf-skewed routers.
# Run on the device machine from the repo root with .whl/ (transformers) and .whlsrv/ (gguf) carried.
set -uo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/transformers-*.whl .whlsrv/gguf-*.whl
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
M=/dev/shm/m; R=${OUT:-/tmp/out}; SHAPE=qwen3-30b-a3b
COMMON="--prompt-tokens 32 --new-tokens 16 --repeats 3 --warmup 1 --timeout 200 --no-resident --temperature 1"
python3 -m lazymoe.bench.writer $SHAPE $M --only safetensors --device cuda 2>&1 | grep -v "it/s\]" | tail -3
for routing in uniform zipf; do
  [ $routing = zipf ] && python3 -m lazymoe.bench.writer $SHAPE $M --routing zipf --set-routing
  python3 -m lazymoe bench --model $M --engines lazymoe --budgets 8 --placements gpu $COMMON \
    --note "random weights, shapes of $SHAPE, routing $routing" --out $R/lazymoe_${routing}_8.json 2>&1 | grep "^|"
done
