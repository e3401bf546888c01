"""The expert-caching MoE engine: experts on disk, the hot ones in VRAM and pinned RAM.

    from lazymoe.engine import Engine, EngineConfig, GenerationConfig
    engine = Engine(EngineConfig(model_path=bundled_model_dir(), vram_budget="64MiB"))

Imports are lazy so that `lazymoe.engine.parts.policies` / `cache` / `trace` (pure Python) load
without pulling in transformers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from lazymoe.engine.config import EngineConfig, GenerationConfig
    from lazymoe.engine.engine import Engine
    from lazymoe.engine.stats import EngineStats

__all__ = ["Engine", "EngineConfig", "EngineStats", "GenerationConfig"]

_WHERE = {
    "Engine": "lazymoe.engine.engine",
    "EngineConfig": "lazymoe.engine.config",
    "GenerationConfig": "lazymoe.engine.config",
    "EngineStats": "lazymoe.engine.stats",
}


def __getattr__(name: str):
    if name in _WHERE:
        import importlib

        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(f"module 'lazymoe.engine' has no attribute {name!r}")
