"""GGUF files for the GGUF tests: the bundled model's twins and a random model wide enough for
K-quants (their blocks are 256 weights: the bundled model's rows are 128 long). Also
`half_for_auto`, which the CPU and GPU tests of the CPU's misses (cpu_misses.py) share."""

from __future__ import annotations

from pathlib import Path

from lazymoe.models.gguf_export import bundled_twin, export_gguf
from lazymoe.models.random import make_random_checkpoint
from lazymoe.paths import bundled_model_dir

PROMPT = "def load(self, path):\n    with open(path) as f:\n"


def twin(out_type: str, folder: Path) -> Path:
    return bundled_twin(out_type, cache_dir=folder)


def wide_random_gguf(folder: Path, out_type: str = "q4_k_m") -> Path:
    """A random 4-layer, 8-expert Qwen3-MoE with 256-wide rows, as `out_type` (Q4_K_M: gate/up
    Q4_K everywhere, down Q6_K in layers 2 and 3 by llama.cpp's rule): formats mix across layers."""
    model_dir = folder / "wide-random"
    if not (model_dir / "config.json").exists():
        make_random_checkpoint(
            model_dir, "qwen3_moe", seed=3, tokenizer_from=bundled_model_dir(),
            hidden_size=256, intermediate_size=256, moe_intermediate_size=256, head_dim=32,
            num_attention_heads=4, num_key_value_heads=2, num_hidden_layers=4, num_experts=8,
            num_experts_per_tok=2,
        )  # fmt: skip
    path = folder / f"wide-random-{out_type}.gguf"
    if not path.exists():
        export_gguf(model_dir, path, out_type, progress=False)
    return path


def half_for_auto(fetch_split):
    """cpu_misses.fetch_split with placement auto's share set to half of each layer's misses
    (what a GPU machine whose link and CPU are equally fast measures; a CPU-only one measures no
    link), other placements left as they are."""
    from lazymoe.engine.compute.cpu_misses import FetchSplit

    def split(engine, k):
        return FetchSplit(k, 128) if engine.config.placement == "auto" else fetch_split(engine, k)

    return split
