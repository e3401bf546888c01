"""Time to first token whatever the text (issue 21): the server sends one chunk per token, even
a token that decodes to no text, and `loadtest.stream_once` notes each one's arrival.

A random model's tokens are mostly ids with no text (the byte-level tokenizer's padding) or half
characters; counting only chunks with text gave no TTFT at all ("nan") or the time of some later
token. Checked on the bundled model and on the bench writer's tiny random model.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest

from lazymoe.bench.shapes import TINY
from lazymoe.bench.writer import write_model
from lazymoe.paths import bundled_model_dir
from lazymoe.server import loadtest
from lazymoe.server.backend import EngineBackend, SamplingParams
from lazymoe.server.config import ServerConfig
from lazymoe.server.detok import TextStream
from lazymoe.server.embedded import EmbeddedServer

pytestmark = pytest.mark.timeout(180)


@pytest.mark.parametrize(
    ("choice", "carries"),
    [
        ({"index": 0, "text": "def", "finish_reason": None}, True),
        ({"index": 0, "text": "", "finish_reason": None}, True),  # a token with no text
        ({"index": 0, "text": "", "finish_reason": "length"}, False),  # the closing chunk
        ({"index": 0, "text": ")", "finish_reason": "stop"}, True),  # a last token with its end
        ({"index": 0, "delta": {"role": "assistant", "content": ""}}, False),  # not a completion
    ],
)
def test_which_streamed_choices_carry_a_token(choice, carries):
    assert loadtest.carries_token(choice) is carries


def timed(backend: EngineBackend, tmp_path, prompt_ids: list[int], max_tokens: int):
    """stream_once against a loopback server of `backend`, and the tokens the engine makes alone."""
    alone = list(backend.stream(prompt_ids, SamplingParams(max_tokens)))
    with EmbeddedServer(
        backend, ServerConfig(port=0), keys_file=str(tmp_path / "keys.json")
    ) as server:
        conn = SimpleNamespace(
            root_url=server.root_url,
            headers={"Authorization": f"Bearer {server.api_key}"},
            model=backend.model_id,
        )
        timing = loadtest.stream_once(conn, prompt_ids, max_tokens=max_tokens)
    return timing, alone


def text_pieces(backend: EngineBackend, ids: list[int]) -> list[str]:
    """What the server's detokenizer gives for each token in turn ("" while it holds back)."""
    text = TextStream(backend.decode)
    return [text.push(t) for t in ids]


def assert_one_arrival_per_token(timing, alone: list[int], eos: frozenset[int]) -> None:
    n_tokens = len([t for t in alone if t not in eos])  # the end of sequence is not sent
    assert timing.n_tokens == n_tokens
    assert len(timing.arrivals_s) == n_tokens  # one chunk per token, text or not
    assert timing.arrivals_s == sorted(timing.arrivals_s)
    assert 0 < timing.ttft_s < timing.total_s and math.isfinite(timing.ttft_s)
    if n_tokens >= 2:
        assert timing.decode_tok_s > 0 and math.isfinite(timing.decode_tok_s)


def test_a_random_models_first_token_is_timed_though_it_has_no_text(tmp_path):
    folder = tmp_path / "tiny-random"
    write_model(TINY, folder, device="cpu", formats=("safetensors",))
    backend = EngineBackend.from_model_path(folder, device="cpu")

    def first_piece(prompt: list[int]) -> str:
        return text_pieces(backend, list(backend.stream(prompt, SamplingParams(1))))[0]

    # the case: a prompt whose first new token has no text (so counting only chunks with text
    # misses it): 8 of these 20 prompts are such a case
    prompts = [list(range(start, start + 12)) for start in range(20, 240, 11)]
    no_text = [p for p in prompts if first_piece(p) == ""]
    assert len(no_text) >= 4
    timing, alone = timed(backend, tmp_path, no_text[0], max_tokens=24)
    pieces = text_pieces(backend, [t for t in alone if t not in backend.eos_token_ids])
    assert pieces[0] == ""
    assert_one_arrival_per_token(timing, alone, backend.eos_token_ids)
    assert timing.text == "".join(pieces) + TextStream(backend.decode).finish()


@pytest.mark.skipif(
    not (bundled_model_dir() / "config.json").exists(),
    reason="the bundled model is not built (`make data`)",
)
def test_the_bundled_models_tokens_arrive_one_chunk_each(tmp_path):
    backend = EngineBackend.from_model_path(bundled_model_dir(), device="cpu")
    prompt = backend.encode("def fibonacci(n):\n")
    timing, alone = timed(backend, tmp_path, prompt, max_tokens=16)
    assert_one_arrival_per_token(timing, alone, backend.eos_token_ids)
    assert timing.text == backend.decode([t for t in alone if t not in backend.eos_token_ids])
