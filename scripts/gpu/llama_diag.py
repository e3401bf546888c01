"""Find which part of the llama.cpp runner crashes on a CUDA build: try each variant in a child process.

    python3 scripts/gpu/llama_diag.py MODEL.gguf
"""

from __future__ import annotations

import os
import subprocess
import sys

VARIANTS = {
    "high-level Llama, all on GPU": "from llama_cpp import Llama; m = Llama(GGUF, n_gpu_layers=-1, n_ctx=256, verbose=False); "
                                    "print(m.eval([1, 2, 3]) or 'eval ok')",
    "runner, llama.cpp logger, all on GPU": "R(C(GGUF, cpu_moe=False))",
    "runner, captured log, all on GPU": "R(C(GGUF, cpu_moe=False))",
    "runner, llama.cpp logger, cpu-moe": "R(C(GGUF, cpu_moe=True))",
    "runner, captured log, cpu-moe": "R(C(GGUF, cpu_moe=True))",
    "high-level runner (api=highlevel), cpu-moe": "R(C(GGUF, cpu_moe=True, api='highlevel'))",
    "runner + NVML sampler thread, cpu-moe": "from lazymoe.bench.measure import ResourceSampler\n"
                                             "with ResourceSampler(): R(C(GGUF, cpu_moe=True))",
}
PRELUDE = ("import faulthandler; faulthandler.enable(); import sys; GGUF = sys.argv[1]\n"
           "from lazymoe.bench.llamacpp import LlamaCppConfig as C, LlamaCppRunner\n"
           "def R(cfg):\n    r = LlamaCppRunner(cfg); print('loaded', flush=True)\n"
           "    print('tokens', list(r.stream(list(range(40, 60)), 4)), flush=True); r.close(); print('closed')\n")


def main() -> int:
    gguf = sys.argv[1]
    for name, code in VARIANTS.items():
        env = dict(os.environ)
        if "llama.cpp logger" in name:
            env["LAZYMOE_LLAMA_LOG"] = "stderr"
        proc = subprocess.run([sys.executable, "-c", PRELUDE + code, gguf], capture_output=True, text=True,
                              env=env, timeout=120)
        print(f"== {name}: rc={proc.returncode}\n{proc.stdout[-600:]}\n{proc.stderr[-1500:]}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
