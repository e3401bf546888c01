"""One request alone: engine.generate vs the same request alone in engine.batch() (issue 21).

    .venv/bin/python scripts/lone_request_gpu.py [--layers N] [--out FILE]

Writes a random model of OLMoE-1B-7B's shapes (`--layers` of its 16, float32 compute, a 5 GiB
expert budget) and decodes one greedy request three ways: `engine.generate`, a batch with the
single-sequence path on (`fast_lone`, the default), and a batch with it off (the eager batched
loop). Then a staggered case: one alone, two more join, they leave. Prints tokens/s and whether
the tokens equal generate's; with --out, writes them as JSON.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import sys
import tempfile
import time
from pathlib import Path

from lazymoe import hardware
from lazymoe.bench.measure import library_versions
from lazymoe.bench.shapes import OLMOE_1B_7B
from lazymoe.bench.writer import write_model
from lazymoe.engine import Engine, GenerationConfig
from lazymoe.engine.batch import EngineBatch


def decode_tok_s(run) -> tuple[list[int], float]:
    start = time.perf_counter()
    tokens = run()
    return tokens, (len(tokens) - 1) / (time.perf_counter() - start)


def alone_in_batch(engine: Engine, prompt: list[int], gen, fast_lone: bool) -> list[int]:
    with EngineBatch(engine, fast_lone=fast_lone) as batch:
        handle, _ = batch.add(prompt, gen)
        while len(batch):
            batch.step()
        return batch.tokens(handle)


def staggered(engine: Engine, prompts, gen) -> tuple[list[list[int]], dict]:
    with engine.batch() as batch:
        handles = [batch.add(prompts[0], gen)[0]]
        for _ in range(16):
            batch.step()
        handles += [batch.add(p, gen)[0] for p in prompts[1:]]
        while len(batch):
            batch.step()
        return [batch.tokens(h) for h in handles], dict(batch.step_counts)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--layers", type=int, default=16)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--out")
    args = parser.parse_args()
    shape = OLMOE_1B_7B.scaled(num_layers=args.layers)
    folder = Path(tempfile.mkdtemp()) / "olmoe-shapes"
    write_model(shape, folder, device="cuda", formats=("safetensors",))
    engine = Engine.from_pretrained(folder, device="cuda", dtype="float32", vram_budget="5GiB")
    print(engine.describe().splitlines()[1])
    gen = GenerationConfig(max_new_tokens=args.tokens, stop_token_ids=())
    prompts = [list(range(100 + 7 * i, 140 + 7 * i)) for i in range(3)]
    engine.generate(prompts[0], gen)  # warm-up: graphs captured, experts cached
    alone_in_batch(engine, prompts[0], gen, fast_lone=False)
    result = {
        "schema": "lazymoe.lone-request/1",
        "created_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(["python", "scripts/lone_request_gpu.py", *sys.argv[1:]]),
        "machine": dataclasses.asdict(hardware.probe()),
        "libraries": library_versions(),
        "protocol": f"random weights, float32, 5 GiB expert budget, greedy, {args.tokens} new "
        "tokens, one timed run each after one warm-up of generate and of the eager batch",
        "shape": shape.name, "layers": args.layers, "decode_path": engine.decode_path,
    }  # fmt: skip
    ref, result["generate_tok_s"] = decode_tok_s(lambda: engine.generate(prompts[0], gen))
    fast, result["batch_lone_fast_tok_s"] = decode_tok_s(
        lambda: alone_in_batch(engine, prompts[0], gen, True)
    )
    eager, result["batch_lone_eager_tok_s"] = decode_tok_s(
        lambda: alone_in_batch(engine, prompts[0], gen, False)
    )
    result["fast_equals_generate"] = fast == ref
    result["eager_equals_generate"] = eager == ref
    alone = [engine.generate(p, gen) for p in prompts]
    got, result["staggered_step_counts"] = staggered(engine, prompts, gen)
    result["staggered_equal_alone"] = [g == a for g, a in zip(got, alone, strict=True)]
    result["staggered_first_mismatch"] = [
        next((i for i, (x, y) in enumerate(zip(g, a, strict=True)) if x != y), None)
        for g, a in zip(got, alone, strict=True)
    ]
    print(json.dumps(result, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
