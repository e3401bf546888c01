"""The quantized Triton decode kernels (lazymoe.engine.compute.triton_quant) against the plain formula.

Reference: each expert's bytes dequantized by lazymoe.quant (exact, as gguf-py), then
out[t] += sum_a w_a * down @ (silu(gate @ x) * (up @ x)) in float64. Without a GPU the kernels
run under Triton's interpreter (tests/conftest.py sets TRITON_INTERPRET=1), in float32: the same
code the GPU compiles. tests/gpu/test_triton_quant_gpu.py runs them compiled, in BF16.

Tolerance: the kernels decode every weight with the same float32 products as lazymoe.quant, so
the weights are exact; what differs is float32 rounding of sums of a few hundred products (and of
h between the kernels): relative ~1e-6 of the largest output. rtol/atol 1e-5 of the largest
output leaves a margin, while one wrong nibble, scale bit or block offset moves outputs by
1e-3 or more (test_a_wrong_layout_is_caught checks the tests can fail).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from gguf_models import PROMPT, twin

from lazymoe import quant
from lazymoe.engine import Engine, EngineConfig, GenerationConfig
from lazymoe.engine.compute import expert_compute, triton_grouped, triton_quant
from lazymoe.engine.compute.triton_quant import SlotLayout, fused_decode_quantized
from lazymoe.engine.loading import load_tokenizer
from lazymoe.engine.storage.gguf_file import GGUFExpertStore, QuantizedExpert
from lazymoe.engine.storage.qpool import QuantizedPool

pytestmark = pytest.mark.skipif(
    triton_quant.unavailable_reason(torch.device("cpu"), torch.float32) is not None
    and not torch.cuda.is_available(),
    reason="Triton is not installed (the dev extra installs it)",
)

K = 8  # router scores per token


def _experts(layout: SlotLayout, n: int, seed: int) -> list[QuantizedExpert]:
    g = torch.Generator().manual_seed(seed)
    experts = []
    for _ in range(n):
        parts = [
            quant.quantize(torch.randn(shape, generator=g) / shape[1] ** 0.5, fmt)
            for fmt, shape in zip(layout.formats, layout.shapes, strict=True)
        ]
        experts.append(QuantizedExpert(*parts))
    return experts


def _pool(layout: SlotLayout, n_slots: int, seed: int = 0) -> QuantizedPool:
    """A pool of `n_slots` random experts, 4 spare bytes per slot (slots may be larger)."""
    pool = QuantizedPool(n_slots, layout.nbytes + 4)
    for slot, expert in enumerate(_experts(layout, n_slots, seed)):
        pool.fill(slot, expert)
    return pool


def _reference(start, x, weights, pairs, pool) -> torch.Tensor:
    """float64: start[t] + sum over (t, slot, k) of weights[t, k] * expert_slot(x[t])."""
    out = start.double().clone()
    for t, slot, k in pairs:
        w = pool.expert(slot).dequantize(torch.float32)
        g, u, d = w.gate.double(), w.up.double(), w.down.double()
        xt = x[t : t + 1].double()
        out[t] += weights[t, k].double() * F.linear(F.silu(F.linear(xt, g)) * F.linear(xt, u), d)[0]
    return out


def _run(layout, pairs, n_tokens=1, n_slots=5, seed=0):
    """Kernel and reference on (token, slot, k) pairs, grouped by token. Returns (got, want)."""
    pool = _pool(layout, n_slots, seed)
    g = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(n_tokens, layout.hidden, generator=g)
    weights = torch.softmax(torch.randn(n_tokens, K, generator=g), dim=-1)
    start = torch.randn(n_tokens, layout.hidden, generator=g)  # `out` is added to
    tok_t, slot_t, pos_t = (torch.tensor(col) for col in zip(*pairs, strict=True))
    counts = torch.bincount(tok_t, minlength=n_tokens)
    starts_t = torch.cat([torch.zeros(1, dtype=torch.long), counts.cumsum(0)])
    got = start.clone()
    fused_decode_quantized(got, x, weights, slot_t, pos_t, pool.data, layout, tok_t, starts_t)
    return got, _reference(start, x, weights, pairs, pool)


def _close(got, want):
    scale = want.abs().max().item()
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5 * scale)


def _one_token(slots):
    return [(0, slot, (3 * a + 1) % K) for a, slot in enumerate(slots)]


EIGHT_WITH_REPEATS = [4, 0, 2, 2, 1, 3, 0, 4]


@pytest.mark.parametrize(
    "formats,intermediate",
    [
        (("q8_0",) * 3, 96),  # down rows: 3 blocks of 32 (not a power of two)
        (("q4_0",) * 3, 96),
        (("q4_1",) * 3, 64),
        (("q4_k",) * 3, 256),
        (("q6_k",) * 3, 256),
        (("q5_k",) * 3, 256),
        (("q4_k", "q4_k", "q6_k"), 256),  # a Q4_K_M layer: down in another format
        (("f32", "f16", "bf16"), 64),  # plain values, one per projection
    ],
)
def test_each_format_matches_the_dequantized_formula(formats, intermediate):
    """Eight experts of one token, slots repeated (a router may choose the same slot twice)."""
    got, want = _run(SlotLayout(formats, intermediate, 256), _one_token(EIGHT_WITH_REPEATS))
    _close(got, want)


@pytest.mark.parametrize("hidden,intermediate", [(160, 64), (256, 128)])  # 5 and 8 blocks a row
@pytest.mark.parametrize("slots", [[3], [1, 1], EIGHT_WITH_REPEATS])
def test_q4_0_at_several_shapes_and_pair_counts(hidden, intermediate, slots):
    got, want = _run(SlotLayout(("q4_0",) * 3, intermediate, hidden), _one_token(slots))
    _close(got, want)


@pytest.mark.parametrize("formats", [("q8_0",) * 3, ("q4_k", "q4_k", "q6_k")])
def test_a_row_of_three_super_blocks(formats):
    """768 = 3 x 256: K-quant rows of a block count that is not a power of two."""
    got, want = _run(SlotLayout(formats, 256, 768), _one_token([1, 0]), n_slots=2)
    _close(got, want)


def test_a_token_with_more_pairs_than_one_tile_holds():
    """The down kernel takes a token's pairs MAX_PAIRS at a time: 11 pairs = a full tile and a
    partial one, still added in order; the second token's single pair is its own."""
    assert triton_quant.MAX_PAIRS == 8
    pairs = [(0, s, a % K) for a, s in enumerate([0, 1, 2, 3, 4, 0, 1, 2, 3, 4, 2])] + [(1, 3, 6)]
    got, want = _run(SlotLayout(("q4_0",) * 3, 64, 128), pairs, n_tokens=2)
    _close(got, want)


@pytest.mark.parametrize(
    "formats,intermediate,hidden",
    [
        (("q8_0",) * 3, 96, 256),
        (("q4_0",) * 3, 96, 256),
        (("q4_1", "q4_1", "q8_0"), 96, 256),
        (("q4_k", "q5_k", "q6_k"), 256, 256),  # gate and up in two formats: two tiles
        (("q5_k", "q5_k", "q4_k"), 256, 256),
        (("f32", "f16", "bf16"), 64, 96),  # a row of 3 groups of 32
    ],
)
def test_the_gpu_tile_sizes_give_the_same_sums(formats, intermediate, hidden, monkeypatch):
    """The interpreter runs bigger tiles than a GPU (TILES): run the GPU's tiles here too, so
    their partial steps and masked groups (down q4_k: 4 groups in a tile of 16) are checked.
    Two pairs: the interpreter's time grows with the programs, here the GPU's many small ones."""
    monkeypatch.setattr(triton_quant, "interpreting", lambda: False)
    layout = SlotLayout(formats, intermediate, hidden)
    got, want = _run(layout, [(0, 1, 5), (0, 0, 1)], n_slots=2)
    _close(got, want)


def test_several_tokens_sum_only_their_own_pairs():
    """Three tokens (a batch decode step): pairs grouped by token, the same slot in two tokens,
    a token with one pair and one with three."""
    pairs = [(0, 2, 5), (0, 4, 1), (1, 2, 0), (2, 0, 7), (2, 1, 2), (2, 3, 3)]
    got, want = _run(SlotLayout(("q8_0", "q8_0", "q4_0"), 64, 128), pairs, n_tokens=3)
    _close(got, want)


def test_the_layout_is_where_quantized_pool_puts_the_bytes():
    layout = SlotLayout(("q4_k", "q4_k", "q6_k"), 256, 256)
    expert = _experts(layout, 1, seed=5)[0]
    assert layout.nbytes == expert.nbytes
    assert SlotLayout.of(expert) == layout
    pool = QuantizedPool(2, layout.nbytes)
    pool.fill(1, expert)
    for offset, part in zip(layout.offsets, (expert.gate, expert.up, expert.down), strict=True):
        assert torch.equal(pool.data[1, offset : offset + part.nbytes], part.data.reshape(-1))


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # the misread scales may be inf or NaN
def test_a_wrong_layout_is_caught():
    """The comparison can fail: read q4_0 bytes as q4_1 (same block, other meaning)."""
    layout = SlotLayout(("q4_0",) * 3, 64, 128)
    pool = _pool(layout, 1)
    x, weights = torch.randn(1, 128), torch.ones(1, K)
    want = _reference(torch.zeros(1, 128), x, weights, _one_token([0]), pool)
    got = torch.zeros(1, 128)
    q4_1 = SlotLayout(("q4_0", "q4_0", "q4_1"), 64, 128)  # 20-byte blocks: a different slot size
    pool_1 = QuantizedPool(1, max(q4_1.nbytes, layout.nbytes))
    pool_1.data[0, : layout.nbytes] = pool.data[0, : layout.nbytes]
    fused_decode_quantized(got, x, weights, torch.tensor([0]), torch.tensor([1]), pool_1.data, q4_1)
    with pytest.raises(AssertionError):
        _close(got, want)


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="q2_k"):
        SlotLayout(("q4_k", "q4_k", "q2_k"), 256, 256)
    layout = SlotLayout(("q8_0",) * 3, 32, 64)
    pool = _pool(layout, 1)
    one = (torch.ones(1, K), torch.tensor([0]), torch.tensor([0]))
    with pytest.raises(ValueError, match="shapes disagree"):
        fused_decode_quantized(torch.zeros(1, 32), torch.randn(1, 32), *one, pool.data, layout)
    with pytest.raises(ValueError, match="uint8"):
        fused_decode_quantized(torch.zeros(1, 64), torch.randn(1, 64), *one,
                               pool.data.view(torch.int8), layout)  # fmt: skip
    with pytest.raises(ValueError, match="tok_t and starts_t"):
        fused_decode_quantized(torch.zeros(2, 64), torch.randn(2, 64), torch.ones(2, K),
                               *one[1:], pool.data, layout)  # fmt: skip
    if triton_quant.interpreting():
        with pytest.raises(ValueError, match="float32 only"):
            fused_decode_quantized(torch.zeros(1, 64, dtype=torch.bfloat16),
                                   torch.randn(1, 64, dtype=torch.bfloat16), *one, pool.data,
                                   layout)  # fmt: skip


@pytest.fixture(scope="module")
def twins(tmp_path_factory):
    folder = tmp_path_factory.mktemp("triton-quant-twins")
    return {name: twin(name, folder) for name in ("q8_0", "q4_0")}


@pytest.mark.parametrize("name", ["q8_0", "q4_0"])
def test_an_engine_on_the_quantized_kernels_gives_the_cpu_paths_tokens(twins, name, monkeypatch):
    """The bundled model's GGUF twins, 3 slots (misses refill slots as it runs): decode through
    the per-pair kernels, prompts of 3 and 10 tokens through the grouped ones (each expert once
    for its tokens), the 10 also in chunks of 4 tokens per launch. Short prompts: the
    interpreter pays per program."""
    path = twins[name]
    prompt = load_tokenizer(path).encode(PROMPT)[:10]
    gen = GenerationConfig(max_new_tokens=4, stop_token_ids=())
    budget = 3 * GGUFExpertStore.open(path).max_expert_qbytes

    def engine(kernel):
        return Engine(
            EngineConfig(model_path=path, device="cpu", kernel=kernel, vram_budget=budget)
        )

    cpu = engine(None)
    want = [cpu.generate(prompt, gen), cpu.generate(prompt[:3], gen)]
    calls = {"per pair": [], "grouped": []}
    for module, name, key in ((triton_quant, "fused_decode_quantized", "per pair"),
                              (triton_grouped, "grouped_experts", "grouped")):  # fmt: skip
        kernel = getattr(module, name)
        monkeypatch.setattr(module, name, lambda *a, kernel=kernel, key=key, **kw:
                            calls[key].append(a[0].shape[0]) or kernel(*a, **kw))  # fmt: skip
    fused = engine("fused")
    assert fused.runtime.kernel == "fused" and cpu.runtime.kernel == "grouped"
    assert [fused.generate(prompt, gen), fused.generate(prompt[:3], gen)] == want
    assert len(prompt) == 10 and set(calls["per pair"]) == {1}  # decode
    assert set(calls["grouped"]) == {3, 10}  # both prompts
    calls["grouped"].clear()
    monkeypatch.setattr(expert_compute, "FUSED_CHUNK_TOKENS", 4)
    assert fused.generate(prompt, gen) == want[0]
    assert max(calls["grouped"]) == 4 and 2 in calls["grouped"]  # the 10 tokens as 4 + 4 + 2
