"""The Triton decode kernels (lazymoe.engine.compute.triton_kernels) against the paths they replace.

Without a GPU they run under Triton's interpreter (tests/conftest.py sets TRITON_INTERPRET=1),
in float32: the arithmetic and the indexing are the same code the GPU compiles. tests/gpu runs
them compiled, in BF16 too.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lazymoe.engine import Engine, GenerationConfig
from lazymoe.engine.compute import kernels, triton_kernels
from lazymoe.engine.reference import full_model, reference_greedy
from lazymoe.models.random import make_random_checkpoint

pytestmark = pytest.mark.skipif(
    triton_kernels.unavailable_reason(torch.device("cpu"), torch.float32) is not None
    and not torch.cuda.is_available(),
    reason="Triton is not installed (the dev extra installs it)",
)

PROMPT = list(range(40, 60))
NEW_TOKENS = 10
GREEDY = GenerationConfig(max_new_tokens=NEW_TOKENS, stop_token_ids=())
EXPERT_BYTES = 3 * 16 * 32 * 4  # make_random_checkpoint: 3 * I * D * 4 bytes (F32)


def _pool(slots, intermediate, hidden, seed=0):
    g = torch.Generator().manual_seed(seed)
    gate_up = torch.randn(slots, 2 * intermediate, hidden, generator=g) / hidden**0.5
    down = torch.randn(slots, hidden, intermediate, generator=g) / intermediate**0.5
    return gate_up, down


@pytest.mark.parametrize("intermediate,hidden", [(48, 40), (16, 300), (64, 64)])
@pytest.mark.parametrize("slots", [[4, 0, 2], [1], [0, 1, 2, 3, 5]])
def test_fused_decode_matches_the_batched_gather(intermediate, hidden, slots):
    """Odd sizes (not multiples of the blocks), any slot order, `out` added to, not overwritten."""
    gate_up, down = _pool(6, intermediate, hidden)
    x = torch.randn(1, hidden)
    weights = torch.softmax(torch.randn(1, 6), dim=-1)
    slot_t = torch.tensor(slots)
    pos_t = torch.tensor([(3 * a + 1) % 6 for a in range(len(slots))])
    start = torch.randn(1, hidden)

    expected = start.clone()
    ws = kernels.DecodeWorkspace(len(slots), gate_up, down, "batched")
    kernels.batched_decode_indexed(expected, x, weights, slot_t, pos_t, gate_up, down, ws, F.silu)
    got = start.clone()
    fused = kernels.DecodeWorkspace(len(slots), gate_up, down, "fused")
    kernels.batched_decode_indexed(got, x, weights, slot_t, pos_t, gate_up, down, fused, F.silu)

    assert fused.gate_up.numel() == 0 and fused.down.numel() == 0  # no gather workspace
    # float32 sums in another order: agreement to float32 rounding of the largest value
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5 * expected.abs().max().item())
    assert not torch.equal(got, start)


def test_fused_decode_rejects_shapes_that_disagree():
    gate_up, down = _pool(3, 16, 32)
    with pytest.raises(ValueError, match="shapes disagree"):
        triton_kernels.fused_decode(
            torch.zeros(1, 32), torch.randn(1, 31), torch.ones(1, 2), torch.tensor([0]),
            torch.tensor([0]), gate_up, down, torch.empty(2, 16),
        )  # fmt: skip


@pytest.mark.parametrize("shape", [(1, 1, 40), (2, 3, 7, 128), (5, 2048)])
def test_rms_norm_is_transformers_rms_norm(shape):
    from transformers.models.qwen3_moe.modeling_qwen3_moe import Qwen3MoeRMSNorm

    norm = Qwen3MoeRMSNorm(shape[-1], eps=1e-6)
    with torch.no_grad():
        norm.weight.copy_(torch.randn(shape[-1]))
    x = torch.randn(shape) * 3
    got = triton_kernels.TritonRMSNorm(norm)(x)
    torch.testing.assert_close(got, norm(x).detach(), rtol=1e-5, atol=1e-5)


def test_what_cannot_run_is_named():
    cpu = torch.device("cpu")
    assert "SiLU" in triton_kernels.unavailable_reason(cpu, torch.float32, torch.nn.GELU())
    assert "float32" in triton_kernels.unavailable_reason(cpu, torch.bfloat16)
    assert triton_kernels.is_silu(F.silu) and triton_kernels.is_silu(torch.nn.SiLU())
    with pytest.raises(ValueError, match=r"kernel='fused' cannot run here.*batched"):
        kernels.check_kernel("fused", cpu, torch.bfloat16, F.silu)
    with pytest.raises(ValueError, match="choose one of"):
        kernels.check_kernel("fast", cpu, torch.float32, F.silu)
    assert kernels.default_kernel(cpu) == "grouped"  # the interpreter is for tests, not a default


@pytest.fixture(scope="module")
def qwen3(tmp_path_factory):
    path = make_random_checkpoint(tmp_path_factory.mktemp("tk") / "m", arch="qwen3_moe", seed=11)
    return path, reference_greedy(full_model(path), PROMPT, NEW_TOKENS)


@pytest.mark.parametrize("decode", ["segments", "model"])
@pytest.mark.parametrize("n_slots", [2, None])  # one layer's top-k; all resident
def test_an_engine_on_the_fused_kernel_gives_the_full_models_tokens(qwen3, decode, n_slots):
    path, expected = qwen3
    budget = None if n_slots is None else n_slots * EXPERT_BYTES
    engine = Engine.from_pretrained(
        path, device="cpu", vram_budget=budget, kernel="fused", decode=decode
    )
    assert engine.runtime.kernel == "fused"
    assert engine.generate(PROMPT, GREEDY) == expected
    if decode == "segments":
        decoder = engine._decoder
        layers = engine.model.model.layers
        assert len(decoder.norms) == 1 + 4 * len(layers)  # final, input, post-attention, q, k
        # the model keeps its own norms outside the decoder's segments (prefill runs them)
        assert type(layers[0].input_layernorm).__name__ == "Qwen3MoeRMSNorm"
        assert type(layers[0].self_attn.q_norm).__name__ == "Qwen3MoeRMSNorm"


@pytest.mark.parametrize(
    "capability,runs",
    [((6, 1), False), ((6, 0), False), ((7, 0), True), ((7, 5), True), ((9, 0), True)],
)
def test_gpus_older_than_volta_keep_the_batched_path(monkeypatch, capability, runs):
    if triton_kernels.triton is None:
        pytest.skip("Triton is not installed: the reason is that, whatever the GPU")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    cuda = torch.device("cuda", 0)
    reason = triton_kernels.unavailable_reason(cuda, torch.float16, F.silu)
    if runs:
        assert reason is None
        assert kernels.default_kernel(cuda, torch.float16, F.silu) == "fused"
    else:
        assert f"compute capability is {capability[0]}.{capability[1]}" in reason
        assert "7.0 or newer" in reason
        assert kernels.default_kernel(cuda, torch.float16, F.silu) == "batched"  # falls back
        with pytest.raises(ValueError, match=r"compute capability.*Use kernel='batched'"):
            kernels.check_kernel("fused", cuda, torch.float16, F.silu)
