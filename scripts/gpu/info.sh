#!/usr/bin/env bash
# Machine facts for data/results/: nvidia-smi, `lazymoe doctor`, measured bandwidths, disk and memory.
set -uo pipefail
export PYTHONPATH="/tmp/h7site:$PWD"
D=${1:-$OUT}
mkdir -p "$D"
nvidia-smi > "$D/nvidia-smi.txt" 2>&1 || true
python3 -m lazymoe doctor > "$D/doctor.txt" 2>&1; python3 -m lazymoe doctor --json > "$D/doctor.json" 2>&1
if python3 -c "import lazymoe.hardware as h; assert hasattr(h, 'measure')" 2>/dev/null; then
  python3 -m lazymoe.hardware --measure --json > "$D/hardware_measure.json" 2>&1
fi
python3 -m lazymoe.bench.bandwidth > "$D/bandwidths.json" 2>&1
{ df -h / /tmp /dev/shm; free -g; nproc; lscpu | head -20; } > "$D/system.txt" 2>&1
cat "$D/bandwidths.json"; tail -3 "$D/system.txt"
