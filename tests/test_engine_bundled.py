"""On the bundled tiny model: the engine writes the full model's greedy tokens at every cache size."""

from __future__ import annotations

import pytest

from lazymoe.engine import Engine, GenerationConfig
from lazymoe.engine.reference import full_model, reference_greedy
from lazymoe.paths import bundled_model_dir

MODEL = bundled_model_dir()
pytestmark = pytest.mark.skipif(
    not (MODEL / "model.safetensors").exists(),
    reason="the bundled model is not built: `python -m lazymoe.models.prepare`",
)
PROMPT_TEXT = "def read_config(path):\n    with open(path) as f:\n"
N_NEW = 16


@pytest.fixture(scope="module")
def expected():
    engine = Engine.from_pretrained(MODEL, device="cpu")
    prompt = engine.tokenizer.encode(PROMPT_TEXT)
    return prompt, reference_greedy(full_model(MODEL), prompt, N_NEW), engine


@pytest.mark.parametrize("fraction", [0.0, 0.125, 0.5, 1.0])  # 0.0: the smallest, top_k slots
@pytest.mark.parametrize("prefetch", [False, True])
def test_bundled_model_tokens_match_at_every_cache_size(expected, fraction, prefetch):
    prompt, want, probe = expected
    n_slots = max(probe.top_k, int(fraction * probe.total_experts))
    engine = Engine.from_pretrained(
        MODEL, device="cpu", vram_budget=n_slots * probe.expert_nbytes, prefetch=prefetch
    )
    assert engine.generate(prompt, GenerationConfig(max_new_tokens=N_NEW, stop_token_ids=())) == want

