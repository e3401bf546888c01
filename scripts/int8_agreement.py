"""Greedy-token agreement of int8 activations with the float path on the bundled model's GGUF twins.

    python scripts/int8_agreement.py [--tokens 32] [--json data/results/quant-int8-token-agreement-dev.json]

For each twin (Q8_0, Q4_0) and prompt, the engine (device "cpu", float32) generates greedily
twice: experts through lazymoe.quant.expert.expert_forward with activations="float" (the
default, token-identical to transformers on the dequantized weights) and "int8" (x rounded to
int8 blocks as llama.cpp does). Reported: the tokens before the first difference, and how many
positions agree (after a difference the two runs continue from different text).
The engine has no int8 setting: this script swaps the function its MoE layer calls.
"""

from __future__ import annotations

import argparse
import functools
import json
import platform
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

import torch

import lazymoe.engine.compute.expert_compute as expert_compute
from lazymoe.engine import Engine, EngineConfig
from lazymoe.engine.config import GenerationConfig
from lazymoe.engine.loading import load_tokenizer
from lazymoe.models.gguf_export import bundled_twin
from lazymoe.quant.expert import expert_forward

PROMPTS = [
    "def load(self, path):\n    with open(path) as f:\n",
    "The quick brown fox",
    "import numpy as np\n\ndef mean(xs):\n",
]


def generate(path: Path, prompts: list[list[int]], activations: str, tokens: int) -> list[list[int]]:
    expert_compute.expert_forward = functools.partial(expert_forward, activations=activations)
    try:
        engine = Engine(EngineConfig(model_path=path, device="cpu", dtype="float32"))
        gen = GenerationConfig(max_new_tokens=tokens, stop_token_ids=())
        return [engine.generate(p, gen) for p in prompts]
    finally:
        expert_compute.expert_forward = expert_forward


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--formats", default="q8_0,q4_0")
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for fmt in args.formats.split(","):
            path = bundled_twin(fmt, cache_dir=Path(tmp))
            tok = load_tokenizer(path)
            prompts = [tok.encode(p) for p in PROMPTS]
            want = generate(path, prompts, "float", args.tokens)
            got = generate(path, prompts, "int8", args.tokens)
            for text, a, b in zip(PROMPTS, want, got, strict=True):
                same = [x == y for x, y in zip(a, b, strict=True)]
                prefix = same.index(False) if False in same else len(same)
                rows.append({"format": fmt, "prompt": text, "tokens": len(a), "same_prefix": prefix,
                             "same_positions": sum(same)})  # fmt: skip
                print(f"{fmt} {text[:24]!r:28}: first {prefix}/{len(a)} tokens identical, "
                      f"{sum(same)}/{len(a)} positions agree")  # fmt: skip
    if args.json:
        record = {
            "what": "greedy tokens of the bundled model's GGUF twins, experts with int8 activations vs float "
                    "(engine device cpu, float32)",
            "versions": {"python": platform.python_version(), "torch": torch.__version__},
            "command": "python scripts/int8_agreement.py " + " ".join(argv if argv is not None else sys.argv[1:]),
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "rows": rows,
        }  # fmt: skip
        Path(args.json).write_text(json.dumps(record, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
