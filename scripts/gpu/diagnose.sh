#!/usr/bin/env bash
# One device call: build llama.cpp (CUDA) without AMX while profiling lazymoe's decode step, then
# check that the build loads and runs a model (the native build segfaulted on this machine's
# Sapphire Rapids CPU: AMX weight buffers, see data/results/h100-llama-diag.txt).
# Carry .device/h7. Results and the wheel (in pieces) land in $OUT.
set -uo pipefail
export PYTHONPATH="/tmp/h7site:$PWD" PYTHONUNBUFFERED=1
R=$OUT; H7=${H7:-.device/h7}
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/h7site $H7/whl/*.whl $H7/diskcache-*.whl
python3 -c "import transformers, torch; print('transformers', transformers.__version__, 'torch', torch.__version__)"
grep -o 'amx[a-z_0-9]*' /proc/cpuinfo | sort -u | tr '\n' ' '; echo
NOAMX="-DGGML_NATIVE=OFF -DGGML_AVX512=ON -DGGML_AVX512_VNNI=ON -DGGML_AVX512_BF16=ON -DGGML_AVX512_VBMI=ON"
( LLAMA_CMAKE_EXTRA="${LLAMA_CMAKE_EXTRA:-$NOAMX}" BUILD_JOBS=${BUILD_JOBS:-13} bash scripts/gpu/setup.sh > $R/setup.log 2>&1; echo "setup rc=$?" >> $R/setup.log ) &
SETUP=$!
timeout 330 python3 scripts/gpu/profile_decode.py --layers ${PROFILE_LAYERS:-8} --hf --out $R/profile.json > $R/profile.log 2>&1
echo "profile rc=$?"; grep -v "^\s*\[\|^\s*\]\|it/s\]\|^USDT" $R/profile.log | grep '"ms_per\|"engine\|"hit\|"gpu_kernel\|"launches\|"budget\|Error\|error' | head -40
wait $SETUP; tail -3 $R/setup.log
python3 -m lazymoe.bench.writer tiny-random /tmp/h7tiny --device cuda > /dev/null
for moe in True False; do
  for extra in 1 0; do
    LAZYMOE_LLAMA_EXTRA_BUFTS=$extra timeout 120 python3 -X faulthandler -c "
from lazymoe.bench.llamacpp import LlamaCppConfig as C, LlamaCppRunner as R
r = R(C('/tmp/h7tiny/model-bf16.gguf', cpu_moe=$moe)); print('tokens', list(r.stream(list(range(40, 60)), 4))); r.close()" > $R/llama_check_${moe}_$extra.txt 2>&1
    echo "llama.cpp cpu_moe=$moe extra_bufts=$extra rc=$? $(grep tokens $R/llama_check_${moe}_$extra.txt)"
  done
done
