"""The engine on a CUDA GPU: same tokens as the full model, and the VRAM pool stays in budget.

Run on the device machine: `pytest -m gpu tests/gpu`.
"""

from __future__ import annotations

import pytest
import torch
from small_model import EXPERT_BYTES, GREEDY, PROMPT, checkpoint_and_tokens

from lazymoe.engine import Engine, GenerationConfig
from lazymoe.engine.reference import full_model, reference_greedy
from lazymoe.models.random import make_random_checkpoint

requires_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
pytestmark = [pytest.mark.gpu, requires_gpu]

@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return checkpoint_and_tokens(tmp_path_factory.mktemp("gpu"))


@pytest.mark.parametrize("n_slots", [2, 5, 17, None])
@pytest.mark.parametrize("placement", ["fetch", "cpu", "auto"])
@pytest.mark.parametrize("ram_slots", [0, 20])
@pytest.mark.parametrize("prefetch", [False, True])
@pytest.mark.parametrize("decode", ["model", "auto"])  # auto: CUDA graphs where placement="fetch"
def test_tokens_match_the_full_model_on_the_gpu(
    checkpoint, n_slots, placement, ram_slots, prefetch, decode
):
    path, expected = checkpoint
    engine = Engine.from_pretrained(
        path, device="cuda",
        vram_budget=None if n_slots is None else n_slots * EXPERT_BYTES,
        ram_budget=ram_slots * EXPERT_BYTES or None,
        placement=placement, prefetch=prefetch, decode=decode,
    )  # fmt: skip
    assert engine.decode_path == ("graphs" if decode == "auto" and placement == "fetch" else "model")
    assert engine.generate(PROMPT, GREEDY) == expected
    stats = engine.stats()
    if placement == "cpu" and n_slots is not None and not prefetch:
        assert stats.experts_on_cpu > 0 and stats.hits == 0  # pure --cpu-moe: VRAM never filled


@pytest.mark.parametrize("n_slots", [2, 8, 32])
@pytest.mark.parametrize("decode", ["model", "graphs"])
def test_vram_for_experts_never_exceeds_the_budget(checkpoint, n_slots, decode):
    path, _ = checkpoint
    budget = n_slots * EXPERT_BYTES + EXPERT_BYTES // 2  # not a whole number of experts
    torch.cuda.empty_cache()
    before = torch.cuda.memory_allocated()
    engine = Engine.from_pretrained(
        path, device="cuda", vram_budget=budget, ram_budget="64MiB", decode=decode
    )
    assert engine.tiers.device.pool.nbytes <= budget
    if decode == "graphs":  # made once: KV buffers, captured graphs, cuBLAS's workspace
        engine._decoder_for(len(PROMPT) + 24)
    resident_and_pool = torch.cuda.memory_allocated() - before
    torch.cuda.reset_peak_memory_stats()
    engine.generate(PROMPT, GenerationConfig(max_new_tokens=24, stop_token_ids=()))
    peak_growth = torch.cuda.max_memory_allocated() - before - resident_and_pool
    # During generation only activations and the KV cache are allocated: less than one expert
    # would be, per layer, so any expert tensor made outside the pool would show here.
    assert peak_growth < 4 * EXPERT_BYTES, f"{peak_growth} bytes allocated beyond the pool"
    assert engine.stats().vram_in_use_bytes > 0


def test_cuda_graphs_replay_one_graph_per_segment_and_match_over_many_tokens(checkpoint):
    """Graphs captured once, replayed for every token of several generations; each generation
    equals the full model's, including one that grows the KV buffers past 256 positions."""
    path, expected = checkpoint
    engine = Engine.from_pretrained(path, device="cuda", vram_budget=5 * EXPERT_BYTES, decode="graphs")
    assert engine.generate(PROMPT, GREEDY) == expected
    decoder = engine._decoder
    assert len(decoder.cuda_graphs) == len(decoder.layers) + 1
    assert engine.generate(PROMPT, GREEDY) == expected and engine._decoder is decoder
    long_prompt = [40 + i % 64 for i in range(300)]
    model = full_model(path, device="cuda")
    want = reference_greedy(model, long_prompt, 8)
    del model
    assert engine.generate(long_prompt, GenerationConfig(max_new_tokens=8, stop_token_ids=())) == want
    assert engine._decoder.max_len == 512


def test_bf16_graphs_stay_close_to_the_bf16_model_path(checkpoint):
    """In bf16 the graphs' masked attention over fixed buffers may round differently from
    transformers' attention over exactly the cached positions: the logits of one decode step
    from the same prefill stay within bf16 noise of each other."""
    from transformers import DynamicCache

    path, _ = checkpoint
    engine = Engine.from_pretrained(path, device="cuda", dtype="bfloat16", decode="graphs")
    with torch.inference_mode():
        cache = DynamicCache(config=engine.model.config)
        ids = torch.tensor([PROMPT], device="cuda")
        token = int(engine.model(input_ids=ids, cache=cache, use_cache=True).logits[0, -1].argmax())
        decoder = engine._decoder_for(len(PROMPT) + 4)
        decoder.load_prefill(cache, len(PROMPT))
        got = decoder.step(token, len(PROMPT)).float().clone()
        step = torch.tensor([[token]], device="cuda")
        want = engine.model(input_ids=step, cache=cache, use_cache=True).logits[0, -1].float()
    assert (got - want).abs().max() <= 0.05 * want.abs().max(), (got - want).abs().max()


@pytest.mark.parametrize("kernel", ["batched", "fused"])
@pytest.mark.parametrize("n_slots", [2, None])
@pytest.mark.parametrize("decode", ["model", "graphs"])
def test_both_decode_kernels_give_the_full_models_tokens(checkpoint, kernel, n_slots, decode):
    """ "fused" (Triton, the GPU default) and "batched" (gather + bmm) on both decode paths."""
    path, expected = checkpoint
    engine = Engine.from_pretrained(
        path, device="cuda", vram_budget=None if n_slots is None else n_slots * EXPERT_BYTES,
        kernel=kernel, decode=decode,
    )  # fmt: skip
    assert engine.runtime.kernel == kernel
    assert engine.generate(PROMPT, GREEDY) == expected


def test_fused_is_the_gpu_default():
    from lazymoe.engine.compute import kernels

    assert kernels.default_kernel(torch.device("cuda"), torch.bfloat16, torch.nn.SiLU()) == "fused"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fused_kernel_at_qwen3_30b_expert_shapes(dtype):
    """Qwen3-30B-A3B's expert shapes (D 2048, I 768, 8 of 32 slots): the Triton kernels against
    the gather + bmm path; bf16 within a few bf16 steps of the largest output."""
    from lazymoe.engine.compute import kernels

    torch.manual_seed(0)
    d, i, k = 2048, 768, 8
    gate_up = (torch.randn(32, 2 * i, d, device="cuda") / d**0.5).to(dtype)
    down = (torch.randn(32, d, i, device="cuda") / i**0.5).to(dtype)
    x = torch.randn(1, d, device="cuda").to(dtype)
    weights = torch.softmax(torch.randn(1, k, device="cuda"), -1).to(dtype)
    slots = torch.tensor([3, 7, 8, 12, 19, 20, 27, 31], device="cuda")
    pos = torch.randperm(k, device="cuda")
    outs = {}
    for kernel in ("batched", "fused"):
        ws = kernels.DecodeWorkspace(k, gate_up, down, kernel)
        outs[kernel] = torch.zeros(1, d, device="cuda", dtype=dtype)
        kernels.batched_decode_indexed(
            outs[kernel], x, weights, slots, pos, gate_up, down, ws, torch.nn.SiLU()
        )
    scale = outs["batched"].abs().max().item()
    tol = 1e-5 if dtype == torch.float32 else 4 * 2**-8
    assert (outs["fused"].float() - outs["batched"].float()).abs().max().item() <= tol * scale


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_triton_rms_norm_on_the_gpu(dtype):
    from transformers.models.qwen3_moe.modeling_qwen3_moe import Qwen3MoeRMSNorm

    from lazymoe.engine.compute.triton_kernels import TritonRMSNorm

    norm = Qwen3MoeRMSNorm(2048).to("cuda", dtype)
    with torch.no_grad():
        norm.weight.copy_(torch.randn(2048))
    x = (torch.randn(3, 1, 2048, device="cuda") * 4).to(dtype)
    want, got = norm(x).float(), TritonRMSNorm(norm)(x).float()
    tol = 1e-5 if dtype == torch.float32 else 2**-7  # one bf16 step at most
    assert ((got - want).abs() <= tol * want.abs().clamp_min(1)).all()


@pytest.mark.parametrize("arch", ["olmoe", "mixtral"])
def test_graphs_run_olmoe_and_mixtral(tmp_path, arch):
    path = make_random_checkpoint(tmp_path / arch, arch=arch, seed=5)
    expected = reference_greedy(full_model(path, device="cuda"), PROMPT, GREEDY.max_new_tokens)
    resident = Engine.from_pretrained(path, device="cuda", decode="graphs")
    assert resident.generate(PROMPT, GREEDY) == expected
    tight = Engine.from_pretrained(path, device="cuda", vram_budget=2 * resident.expert_nbytes, decode="graphs")
    assert tight.generate(PROMPT, GREEDY) == expected and tight.stats().misses > 0


@pytest.mark.parametrize("decode", ["model", "graphs"])
def test_a_page_locked_checkpoint_gives_the_same_tokens_without_staging(checkpoint, decode):
    path, expected = checkpoint
    engine = Engine.from_pretrained(
        path, device="cuda", vram_budget=3 * EXPERT_BYTES, pin_checkpoint=True, decode=decode
    )
    assert engine.tiers.direct and engine.pinned_bytes > 0 and "page-locked" in engine.describe()
    assert engine.generate(PROMPT, GREEDY) == expected
    links = engine.stats().links
    assert links["pinned file->vram"]["bytes"] > 0 and "disk->pinned" not in links
    engine.close()
    assert not engine.store.pinned  # close() unlocks the file


def test_pin_checkpoint_with_a_ram_tier_goes_through_the_ram_tier(checkpoint):
    path, expected = checkpoint
    engine = Engine.from_pretrained(path, device="cuda", vram_budget=3 * EXPERT_BYTES,
                                    ram_budget=8 * EXPERT_BYTES, pin_checkpoint=True)  # fmt: skip
    assert not engine.tiers.direct
    assert engine.generate(PROMPT, GREEDY) == expected
