#!/usr/bin/env bash
# First device call: build/install llama.cpp (CUDA), record the machine, then a small end-to-end check:
# the tiny random model, then OLMoE-1B-7B shapes (14 GB BF16), llama.cpp --cpu-moe vs lazymoe at 5 GB.
set -uo pipefail
# $OUT gets at most 8 files: the wheel pieces (setup.sh) and one tarball of the rest.
export PYTHONPATH="/tmp/h7site:$PWD" PYTHONUNBUFFERED=1
bash scripts/gpu/setup.sh || { echo "setup failed"; exit 1; }
S=/tmp/h7out; mkdir -p $S
bash scripts/gpu/info.sh $S
W=/tmp/h7work; mkdir -p $W
python3 -m lazymoe.bench.writer tiny-random $W/tiny --device cuda
timeout 120 python3 -m lazymoe bench --model $W/tiny --engines llamacpp-cpu-moe llamacpp-gpu lazymoe \
  --budgets 0.001 --placements gpu cpu auto --prompt-tokens 16 --new-tokens 8 --repeats 2 \
  --out $S/smoke_tiny.json --timeout 60
python3 -m lazymoe.bench.writer olmoe-1b-7b-shapes $W/olmoe --device cuda --gguf /dev/shm/olmoe.gguf | tee $S/olmoe_write.json
ln -sf /dev/shm/olmoe.gguf $W/olmoe/model-bf16.gguf
timeout 200 python3 -m lazymoe bench --model $W/olmoe --engines llamacpp-cpu-moe lazymoe \
  --budgets 5 --placements gpu auto --prompt-tokens 32 --new-tokens 16 --repeats 3 \
  --out $S/smoke_olmoe.json --timeout 90
df -h / /tmp /dev/shm; free -g
tar czf $OUT/smoke.tar.gz -C $S .  # one file back ($OUT takes 8)
