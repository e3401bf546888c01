"""How fast one expert travels from a memory-mapped checkpoint to the GPU, by each path.

    python scripts/gpu/copy_paths.py /dev/shm/prof     (a folder written by lazymoe.bench.writer)

Prints GB/s for: a copy from mapped pages touched for the first time into a pinned staging buffer
(page faults), the same pages again (mapped), with one CPU thread, after madvise(MADV_POPULATE_READ)
over the whole mapping, the staging buffer to the GPU, and (after cudaHostRegister of the mapping,
read-only) straight from the mapping to the GPU: the path EngineConfig.pin_checkpoint takes.
Each line is one pass over 60 experts; run it on a quiet machine. Figures from an H200 machine:
data/results/h200-expert-copy-paths.txt.
"""

from __future__ import annotations

import ctypes
import gc
import sys
import time

import numpy as np
import torch

from lazymoe.engine.storage.store import ExpertStore

MADV_POPULATE_READ = 22  # Linux >= 5.14


def main(model_dir: str) -> None:
    store = ExpertStore.open(model_dir)
    buf = store.empty_buffers(pin_memory=True)
    keys = store.keys()

    def rate(ks, label):
        start, n = time.perf_counter(), 0
        for k in ks:
            n += store.read_into(*k, buf)
        dt = time.perf_counter() - start
        print(f"{label}: {len(ks)} experts {n / dt / 1e9:.1f} GB/s ({dt / len(ks) * 1e6:.0f} us each)", flush=True)

    print("torch threads", torch.get_num_threads())
    rate(keys[0:60], "cold pass (first touch of the mapped pages)")
    rate(keys[0:60], "warm pass (pages mapped)")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    rate(keys[0:60], "warm, 1 thread")
    torch.set_num_threads(threads)
    rate(keys[60:120], "cold pass 2")
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    maps = [o for o in gc.get_objects() if isinstance(o, np.memmap) and o.nbytes > 2**30]
    start = time.perf_counter()
    for m in maps:
        addr = m.ctypes.data
        page = addr - addr % 4096
        rc = libc.madvise(ctypes.c_void_p(page), ctypes.c_size_t(m.nbytes + addr - page), MADV_POPULATE_READ)
        print(f"madvise populate {m.nbytes / 1e9:.1f} GB rc {rc} {time.perf_counter() - start:.2f}s", flush=True)
    rate(keys[120:180], "after populate")

    dev = {r: torch.empty_like(getattr(buf, r), device="cuda") for r in ("gate", "up", "down")}

    def to_gpu(views_of, ks, label):
        torch.cuda.synchronize()
        start, n = time.perf_counter(), 0
        for k in ks:
            src = views_of(k)
            for r in ("gate", "up", "down"):
                dev[r].copy_(getattr(src, r), non_blocking=True)
                n += getattr(src, r).nbytes
        torch.cuda.synchronize()
        dt = time.perf_counter() - start
        print(f"{label}: {n / dt / 1e9:.1f} GB/s ({dt / len(ks) * 1e6:.0f} us/expert)", flush=True)

    to_gpu(lambda k: buf, keys[:20], "pinned staging buffer -> GPU")
    start = time.perf_counter()
    locked = store.pin_for_cuda()
    print(f"cudaHostRegister (read-only) {locked / 1e9:.1f} GB in {time.perf_counter() - start:.2f}s", flush=True)
    to_gpu(lambda k: store.views(*k), keys[300:360], "page-locked mapping -> GPU, untouched experts")
    to_gpu(lambda k: store.views(*k), keys[300:360], "again")
    store.close()


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "/dev/shm/prof")
