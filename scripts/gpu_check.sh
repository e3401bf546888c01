#!/usr/bin/env bash
# The lead's GPU check, run on a CUDA machine with no network from the repository root:
#   the doctor (server role: that machine runs `lazymoe serve`, not JupyterLab), the probe and
#   measured bandwidths, then every GPU test. Wheels the machine lacks travel in .whl/ and .whlsrv/.
# Usage: OUT=/some/dir bash scripts/gpu_check.sh
set -u
OUT=${OUT:-/tmp/gpu_check}
mkdir -p "$OUT"
if ls .whl/*.whl .whlsrv/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/transformers-*.whl .whlsrv/*.whl
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD
fi
nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1
python3 -m lazymoe doctor --role server 2>&1 | tee "$OUT/doctor_server.txt"
python3 -m lazymoe.hardware --measure --json > "$OUT/hardware.json" 2> "$OUT/hardware.err"
python3 -m lazymoe.hardware --measure 2>/dev/null | tail -20
python3 -m pytest -m gpu -q -p no:cacheprovider tests/gpu tests/test_hardware.py tests/test_quant_matmul.py \
  tests/test_store.py tests/test_server_engine.py 2>&1 | tee "$OUT/gpu_tests.log" | tail -15
