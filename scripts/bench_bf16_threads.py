"""How numba's thread pool behaves for lazymoe.quant.kernels_bf16 on this machine, per threading
layer (default, omp, workqueue, tbb; each in its own process): an empty parallel region back to
back and after the host spun idle for 0.2, 1 and 5 ms (idle workers fall asleep; the CPU's share
of each layer's misses wakes them), then GB/s of BF16 weights read for one token with 6
matrices a call (a layer's gate/up of 3 experts) and 48, and torch's matmul beside them, at 1 to 16
threads. Results: OUT (default .)/bf16-threading-layers.json.

    python scripts/bench_bf16_threads.py      # data/results/h200-bf16-threading-layers.json
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time


def child() -> dict:
    import numba
    import numpy as np
    import torch
    from numba import njit, prange

    from lazymoe.measure import copies_past_cache
    from lazymoe.quant import kernels_bf16

    d, i_ = 2048, 768  # Qwen3-30B-A3B's expert: (I, D) matrices
    n_mats = 48 * copies_past_cache(48 * i_ * d * 2, 2)  # past the CPU's largest cache
    mats = [torch.randn(i_, d).to(torch.bfloat16) for _ in range(n_mats)]
    x = torch.randn(1, d).to(torch.bfloat16)

    @njit(parallel=True)
    def empty(n):
        s = np.zeros(n)
        for i in prange(n):
            s[i] = i
        return s

    out = {}
    for n in [t for t in (1, 2, 4, 8, 16) if t <= numba.config.NUMBA_NUM_THREADS]:
        numba.set_num_threads(n)
        torch.set_num_threads(n)
        kernels_bf16.matvec_many(x, mats[:6], threads=n)
        empty(64)
        start = time.perf_counter()
        for _ in range(200):
            empty(64)
        res = {"region_us": (time.perf_counter() - start) / 200 * 1e6}
        for gap in (200e-6, 1e-3, 5e-3):
            times = []
            for _ in range(100):
                end = time.perf_counter() + gap
                while time.perf_counter() < end:  # the host spinning on a flag
                    pass
                start = time.perf_counter()
                empty(64)
                times.append(time.perf_counter() - start)
            times.sort()
            res[f"region_after_{gap * 1e6:.0f}us_idle_us"] = [round(times[50] * 1e6, 1), round(times[90] * 1e6, 1)]
        for group in (6, 48):
            best = float("inf")
            for _ in range(5):
                start = time.perf_counter()
                for i in range(0, n_mats, group):
                    kernels_bf16.matvec_many(x, mats[i : i + group], threads=n)
                best = min(best, time.perf_counter() - start)
            res[f"numba_{group}_gbps"] = n_mats * i_ * d * 2 / best / 1e9
        best = float("inf")
        for _ in range(5):
            start = time.perf_counter()
            for m in mats:
                torch.nn.functional.linear(x, m)
            best = min(best, time.perf_counter() - start)
        res["torch_gbps"] = n_mats * i_ * d * 2 / best / 1e9
        out[n] = res
    out["layer"] = numba.threading_layer()
    return out


def main() -> None:
    results = {}
    for layer in ("default", "omp", "workqueue", "tbb"):
        env = dict(os.environ)
        if layer != "default":
            env["NUMBA_THREADING_LAYER"] = layer
        proc = subprocess.run([sys.executable, __file__, "child"], env=env, capture_output=True, text=True,
                              timeout=300)  # fmt: skip
        line = (proc.stdout.strip().splitlines() or [""])[-1]
        try:
            results[layer] = json.loads(line)
        except json.JSONDecodeError:
            results[layer] = {"error": proc.stderr[-400:]}
        print(layer, json.dumps(results[layer]), flush=True)
    with open(os.path.join(os.environ.get("OUT", "."), "bf16-threading-layers.json"), "w") as f:
        json.dump(results, f, indent=1)


if __name__ == "__main__":
    if sys.argv[1:] == ["child"]:
        print(json.dumps(child()))
    else:
        main()
