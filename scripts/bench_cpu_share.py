"""The CPU's share of the misses, A/B in one process (one page-locking of the checkpoint): the
share tuned (cpu_misses.ShareTuner) or fixed at 0.5, 0.75 and 1 (every miss fetched). Qwen3-30B-A3B shapes in
BF16 at an 8 GB budget on a GPU, 128 new tokens a case after a warm-up generation; per case the
decode tokens/s, the share, and the host's microseconds per layer waiting and computing.
Results: OUT (default .)/cpu-share-ab.json.

    python -m lazymoe.bench.writer qwen3-30b-a3b /dev/shm/lazymoe-qwen3-30b-a3b --only safetensors --device cuda
    python scripts/bench_cpu_share.py /dev/shm/lazymoe-qwen3-30b-a3b independent real-text
"""

from __future__ import annotations

import json
import os
import sys
import time

from lazymoe.bench.routing import make_trace
from lazymoe.engine import Engine, EngineConfig, GenerationConfig
from lazymoe.engine.compute import cpu_misses

CASES = (("tuned", None), ("all fetched", 256), ("share 0.5", 128), ("share 0.75", 192),
         ("tuned again", None))  # fmt: skip


def run_case(engine, decoder, regime: str, name: str, share: int | None) -> dict:
    tuner = decoder.tuner
    if share is not None:  # fixed: the tuner set aside for this case
        decoder.tuner = None
        decoder.share.fill_(share)
    box = decoder.mailbox
    engine.stats()  # the decoder's counts flushed: its decode steps' own CPU experts
    wait0, compute0, cpu0 = box.wait_s, box.compute_s, decoder.timings["cpu_experts"]
    tokens0 = decoder.timings["tokens"]
    gen = GenerationConfig(max_new_tokens=128, stop_token_ids=(), temperature=1.0)
    start = time.perf_counter()
    out = engine.generate(list(range(200, 232)), gen)
    seconds = time.perf_counter() - start
    layers = (decoder.timings["tokens"] - tokens0) * len(decoder.layers)
    engine.stats()
    on_cpu = decoder.timings["cpu_experts"] - cpu0
    row = {"regime": regime, "case": name, "tok_s": round(len(out) / seconds, 2),
           "share": int(decoder.share.item()) / cpu_misses.SHARE_ONE,
           "host_wait_us_layer": round((box.wait_s - wait0) / layers * 1e6, 1),
           "host_compute_us_layer": round((box.compute_s - compute0) / layers * 1e6, 1),
           "cpu_experts_layer": round(on_cpu / layers, 2),
           "us_per_cpu_expert": round((box.compute_s - compute0) / max(on_cpu, 1) * 1e6, 1)}  # fmt: skip
    if share is not None:
        decoder.tuner = tuner
        decoder.share.fill_(tuner.share)
    return row


def main(model: str, regimes: list[str]) -> None:
    rows = []
    for regime in regimes or ["independent"]:
        trace = make_trace(regime, 8192, 48, 128, 8, seed=1)
        config = EngineConfig(model_path=model, device="cuda", dtype="bfloat16", vram_budget="8GB",
                              pin_checkpoint=True, placement="auto", prefetch=False, routing_trace=trace)  # fmt: skip
        start = time.perf_counter()
        engine = Engine(config)
        print(regime, "loaded in", round(time.perf_counter() - start, 1), "s", flush=True)
        print(engine.describe(), flush=True)
        decoder = engine._decoder_for(64)
        engine.generate(list(range(100, 132)), GenerationConfig(max_new_tokens=128, stop_token_ids=(),
                                                                temperature=1.0))  # warm-up  # fmt: skip
        for name, share in CASES:
            rows.append(run_case(engine, decoder, regime, name, share))
            print(json.dumps(rows[-1]), flush=True)
        print("tuner windows (share, ms a token):",
              [(round(s / 256, 3), round(c * 1e3, 2)) for s, c in list(decoder.tuner.history)[-20:]], flush=True)
        engine.close()
    with open(os.path.join(os.environ.get("OUT", "."), "cpu-share-ab.json"), "w") as f:
        json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
