"""The engine's own calls into transformers raise no FutureWarning or DeprecationWarning.

transformers renames arguments with a FutureWarning first and removes them later (the
`past_key_values` keyword of every model's forward goes in 5.40, for `cache`): a warning from one
of our calls today is an engine that breaks at the next upgrade. pyproject.toml bounds
transformers to the versions these tests cover.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import torch
import transformers.utils.logging as hf_logging
from transformers import DynamicCache

from lazymoe import paths
from lazymoe.engine import Engine, GenerationConfig
from lazymoe.engine.parts.trace import record_trace
from lazymoe.engine.reference import full_model, reference_greedy
from lazymoe.models.random import make_random_checkpoint
from lazymoe.models.speed import dense_model, time_decode

DEPRECATIONS = (FutureWarning, DeprecationWarning)
PROMPT = list(range(40, 52))  # 12 token ids, valid in every tiny vocabulary
GREEDY = GenerationConfig(max_new_tokens=4, stop_token_ids=())


class _Notices(logging.Handler):
    """transformers logs some deprecations ("`past_key_values` ... deprecated") instead of warning."""

    def __init__(self) -> None:
        super().__init__(level=logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if "deprecat" in record.getMessage().lower():
            self.messages.append(record.getMessage())


@contextmanager
def no_deprecations() -> Iterator[None]:
    """Fail on a FutureWarning/DeprecationWarning raised by a call inside the block, or a logged
    transformers deprecation notice. A warning a module emits while being imported (a third-party
    import-time notice) is not a call of ours and does not count."""
    notices = _Notices()
    logger = logging.getLogger("transformers")
    hf_logging.warning_once.cache_clear()  # a notice logged earlier in this process shows again
    logger.addHandler(notices)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield
    finally:
        logger.removeHandler(notices)
    ours = [
        f"{w.category.__name__} at {w.filename}:{w.lineno}: {w.message}"
        for w in caught
        if issubclass(w.category, DEPRECATIONS) and "importlib" not in w.filename
    ]
    found = sorted(set(ours + notices.messages))
    assert not found, "\n".join(found)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """The bundled model (when built) and random tiny OLMoE and Mixtral checkpoints."""
    root = tmp_path_factory.mktemp("warnings")
    out = {arch: make_random_checkpoint(root / arch, arch=arch, seed=3) for arch in ("olmoe", "mixtral")}
    if (paths.bundled_model_dir() / "config.json").is_file():
        out["bundled"] = paths.bundled_model_dir()
    return out


@pytest.mark.parametrize("name", ["bundled", "olmoe", "mixtral"])
@pytest.mark.parametrize("decode", ["model", "segments"])
def test_a_generation_raises_no_deprecation_warning(checkpoints, name, decode):
    if name not in checkpoints:
        pytest.skip("the bundled model is not built (python -m lazymoe.models.prepare)")
    path = checkpoints[name]
    with no_deprecations():
        engine = Engine.from_pretrained(path, device="cpu", vram_budget="1MiB", decode=decode)
        new = engine.generate(PROMPT, GREEDY)
        engine.forward_logits(PROMPT)
        engine.close()
    assert len(new) == GREEDY.max_new_tokens  # it did generate


def test_the_reference_and_the_trace_recorder_raise_no_deprecation_warning(checkpoints):
    with no_deprecations():
        model = full_model(checkpoints["olmoe"])
        assert len(reference_greedy(model, PROMPT, 3)) == 3
        record_trace(model, PROMPT, chunk_tokens=5)
        time_decode(dense_model(hidden_size=64, num_layers=1, vocab_size=64), n_new=2, prompt_tokens=4)


def test_the_check_catches_a_deprecated_call(checkpoints):
    """The yardstick itself: the old keyword, passed on purpose, is caught."""
    model = full_model(checkpoints["olmoe"])
    ids = torch.tensor([PROMPT])
    old = {"past_key_values": DynamicCache(config=model.config)}  # the name that goes in 5.40
    with pytest.raises(AssertionError, match="past_key_values"), no_deprecations(), torch.inference_mode():
        model(input_ids=ids, use_cache=True, **old)
