"""Layers split across devices (EngineConfig.devices, `--gpus 0,1`): the same tokens as one device.

On this CPU-only machine devices=("cpu", "cpu") runs the same arithmetic with two of everything:
two expert caches, two runtimes, each layer bound to its device's. That tensors really follow the
layers to another device is checked with PyTorch's "meta" device as the second one (an op mixing
a CPU and a meta tensor raises, as one mixing two GPUs does); tests/gpu/test_engine_split_gpu.py
checks two real GPUs.
"""

from __future__ import annotations

import argparse
from collections import Counter

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM, DynamicCache

from lazymoe.engine import Engine, EngineConfig, GenerationConfig
from lazymoe.engine import cli as run_cli
from lazymoe.engine.arch import moe_blocks
from lazymoe.engine.compute.split import layer_ranges, place, split_layers
from lazymoe.models.archs import ARCHS
from lazymoe.models.random import SUPPORTED_ARCHS, make_random_checkpoint
from lazymoe.paths import bundled_model_dir
from lazymoe.server import cli as serve_cli

MODEL = bundled_model_dir()
needs_bundled = pytest.mark.skipif(
    not (MODEL / "model.safetensors").exists(),
    reason="the bundled model is not built: `python -m lazymoe.models.prepare`",
)
GREEDY = GenerationConfig(max_new_tokens=16, stop_token_ids=())
TWO_CPUS = ("cpu", "cpu")
BUNDLED_EXPERT_BYTES = 3 * 128 * 128 * 4  # 3 * I * D * 4 bytes (F32)
RANDOM_EXPERT_BYTES = 3 * 16 * 32 * 4  # the tiny random checkpoints
PROMPT = list(range(40, 60))


# -- which layer goes where ------------------------------------------------------------------------
@pytest.mark.parametrize("n_layers", [1, 2, 3, 5, 8, 48])
@pytest.mark.parametrize("n_devices", [1, 2, 3, 4])
def test_split_layers_is_contiguous_balanced_and_uses_every_device(n_layers, n_devices):
    if n_devices > n_layers:
        return
    split = split_layers(n_layers, n_devices)
    assert len(split) == n_layers  # every layer once
    assert split == sorted(split) and split[0] == 0  # contiguous ranges, in device order
    assert set(split) == set(range(n_devices))  # no device left idle
    sizes = Counter(split).values()
    assert max(sizes) - min(sizes) <= 1


def test_split_layers_examples_and_errors():
    assert split_layers(5, 2) == [0, 0, 0, 1, 1]  # the first device takes the extra layer
    assert split_layers(48, 2) == [0] * 24 + [1] * 24
    with pytest.raises(ValueError, match="at least one device"):
        split_layers(4, 0)
    with pytest.raises(ValueError, match="use at most 3 devices"):
        split_layers(3, 4)
    assert layer_ranges([0, 1, 2, 5, 6, 9]) == "0-2, 5-6, 9"


# -- tensors follow the layers ---------------------------------------------------------------------
class _ZeroExperts(torch.nn.Module):
    """Meta tensors hold no numbers: the experts only need to keep the shape and device."""

    def forward(self, hidden, top_k_index, top_k_weights):
        return torch.zeros_like(hidden)


@pytest.mark.parametrize("arch", list(ARCHS))
def test_hidden_states_rotary_and_cache_follow_each_layer_to_its_device(arch):
    config = AutoConfig.for_model(arch, **{**ARCHS[arch].tiny_config, "tie_word_embeddings": True})
    model = AutoModelForCausalLM.from_config(config).eval()
    for _, block in moe_blocks(model):
        block.experts = _ZeroExperts()
    cpu, meta = torch.device("cpu"), torch.device("meta")
    assert place(model, [cpu, meta]) == [0, 0, 1]
    base = model.model
    assert base.embed_tokens.weight.device == cpu and base.rotary_emb.inv_freq.device == cpu
    assert [next(layer.parameters()).device for layer in base.layers] == [cpu, cpu, meta]
    assert base.norm.weight.device == meta and model.lm_head.weight.device == meta  # tied: a copy
    cache = DynamicCache(config=model.config)
    with torch.inference_mode():  # without the hooks, layer 2 would mix CPU and meta tensors
        out = base(input_ids=torch.tensor([[1, 2, 3, 4]]), cache=cache, use_cache=True)
        assert out.last_hidden_state.device == meta
        base(input_ids=torch.tensor([[5]]), cache=cache, use_cache=True)  # a decode step too
    assert [layer.keys.device for layer in cache.layers] == [cpu, cpu, meta]
    assert [layer.keys.shape[-2] for layer in cache.layers] == [5, 5, 5]


# -- the same tokens as one device -----------------------------------------------------------------
def bundled(**fields) -> Engine:
    return Engine.from_pretrained(MODEL, dtype="float32", **{"device": "cpu", **fields})


@pytest.fixture(scope="module")
def prompts():
    tokenizer = bundled().tokenizer
    texts = ["def read_config(path):\n    with open(path) as f:\n", "SELECT name FROM users"]
    return [tokenizer.encode(text) for text in texts]


@needs_bundled
@pytest.mark.parametrize("n_slots", [3, None])  # 3 of a device's 32: fetches in every layer
@pytest.mark.parametrize("prefetch", [False, True])
def test_the_bundled_model_split_gives_the_same_tokens_as_one_device(prompts, n_slots, prefetch):
    budget = None if n_slots is None else n_slots * BUNDLED_EXPERT_BYTES
    one = bundled(vram_budget=budget, prefetch=prefetch)
    two = bundled(device="auto", devices=TWO_CPUS, vram_budget=budget, prefetch=prefetch)
    assert [s.layers for s in two.shares] == [[0, 1], [2, 3]]
    assert [s.tiers.device.pool.n_slots for s in two.shares] == [n_slots or 32] * 2  # per device
    for prompt in prompts:
        assert two.generate(prompt, GREEDY) == one.generate(prompt, GREEDY)
    stats, per_device = two.stats(), two.stats().devices
    assert stats.tokens == 2 * GREEDY.max_new_tokens
    for key in ("hits", "misses", "bytes_moved", "pool_bytes", "experts_on_device"):
        assert getattr(stats, key) == sum(d[key] for d in per_device), key
    assert stats.tiers["ram"]["misses"] == stats.misses and stats.tiers["ram"]["slots"] == 2 * (n_slots or 32)
    per_layer = stats.tiers["ram"]["per_layer"]
    assert sum(per_layer[layer]["misses"] for layer in (2, 3)) == per_device[1]["misses"]
    if n_slots is not None:
        assert all(d["misses"] > 0 for d in per_device)  # both devices fetched
    if prefetch and n_slots is not None:
        assert two.runtime.prefetcher.next_layer == {0: 1, 2: 3}  # never across devices
        assert stats.prefetch["predicted"] > 0


@needs_bundled
def test_each_layer_calls_its_own_devices_runtime(prompts):
    engine = bundled(device="auto", devices=TWO_CPUS, vram_budget=3 * BUNDLED_EXPERT_BYTES)
    first, second = engine.shares
    assert first.runtime is not second.runtime and first.tiers is not second.tiers
    for share in engine.shares:
        for layer in share.moe_layers:
            assert engine.blocks[layer].experts.runtime is share.runtime
        share.runtime.computed_experts = Counter()
    engine.generate(prompts[0], GREEDY)
    assert {layer for layer, _ in first.runtime.computed_experts} == {0, 1}
    assert {layer for layer, _ in second.runtime.computed_experts} == {2, 3}
    assert {layer for layer, _ in first.tiers.device.book.resident()} <= {0, 1}
    engine.reset_stats()
    assert all(d["hits"] == d["misses"] == d["bytes_moved"] == 0 for d in engine.stats().devices)
    lines = engine.describe().splitlines()
    assert "cpu: layers 0-1, ram 3 of 32 experts" in lines[-2] and "layers 2-3" in lines[-1]
    engine.close()
    assert engine.shares == [] and engine.model is None


@needs_bundled
@pytest.mark.parametrize("n_slots", [3, None])
def test_batched_generation_split_equals_not_split(prompts, n_slots):
    budget = None if n_slots is None else n_slots * BUNDLED_EXPERT_BYTES

    def together(engine):
        with engine.batch() as batch:
            handles = [batch.add(p, GREEDY)[0] for p in prompts]
            while len(batch):
                batch.step()
            return [batch.tokens(h) for h in handles]

    one = bundled(vram_budget=budget)
    expected = [one.generate(p, GREEDY) for p in prompts]
    assert together(bundled(device="auto", devices=TWO_CPUS, vram_budget=budget)) == expected


@pytest.fixture(scope="module")
def random_models(tmp_path_factory):
    root = tmp_path_factory.mktemp("split-random")
    models = {arch: make_random_checkpoint(root / arch, arch=arch, seed=3) for arch in SUPPORTED_ARCHS}
    models["dense-layer"] = make_random_checkpoint(
        root / "dense", arch="qwen3_moe", seed=5, num_hidden_layers=4, mlp_only_layers=[1]
    )
    return models


@pytest.mark.parametrize("arch", [*SUPPORTED_ARCHS, "dense-layer"])
@pytest.mark.parametrize("n_slots", [2, None])  # 2 = one token's top-k, the smallest budget
def test_every_architecture_split_gives_the_same_tokens(random_models, arch, n_slots):
    budget = None if n_slots is None else n_slots * RANDOM_EXPERT_BYTES
    one = Engine.from_pretrained(random_models[arch], device="cpu", vram_budget=budget)
    split = Engine.from_pretrained(random_models[arch], devices=TWO_CPUS, vram_budget=budget)
    assert split.generate(PROMPT, GREEDY) == one.generate(PROMPT, GREEDY)
    if n_slots is not None:
        assert all(d["misses"] > 0 for d in split.stats().devices)
    three = Engine.from_pretrained(random_models[arch], devices=("cpu",) * 3, vram_budget=budget)
    assert three.generate(PROMPT, GREEDY) == one.generate(PROMPT, GREEDY)


def test_a_device_with_only_dense_layers_is_refused(tmp_path):
    path = make_random_checkpoint(tmp_path / "m", num_hidden_layers=4, mlp_only_layers=[2])
    with pytest.raises(ValueError, match=r"without a MoE block.*fewer devices"):
        Engine.from_pretrained(path, devices=("cpu",) * 3)  # layers [0, 1], [2], [3]


@needs_bundled
def test_a_split_engine_decodes_with_the_model_path_only():
    assert bundled(device="auto", devices=TWO_CPUS).decode_path == "model"
    with pytest.raises(ValueError, match=r"split across devices.*use 'model'"):
        bundled(device="auto", devices=TWO_CPUS, decode="segments")


# -- bad input -------------------------------------------------------------------------------------
def test_devices_are_checked_when_the_config_is_made():
    with pytest.raises(ValueError, match="name two or more"):
        EngineConfig(MODEL, devices=("cpu",))
    with pytest.raises(ValueError, match="disagree: leave device='auto'"):
        EngineConfig(MODEL, device="cuda", devices=TWO_CPUS)
    with pytest.raises(ValueError, match="names a GPU twice"):
        EngineConfig(MODEL, devices="0,0")
    with pytest.raises(ValueError, match="'gpu1' is not a device"):
        EngineConfig(MODEL, devices=["cpu", "gpu1"])
    assert EngineConfig(MODEL, devices=[0, "cuda:1"]).devices == ("cuda:0", "cuda:1")
    assert EngineConfig(MODEL, device="cpu", devices="cpu,cpu").devices == TWO_CPUS


def test_a_gpu_pytorch_does_not_see_is_named_with_the_count_it_sees(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    config = EngineConfig(MODEL, devices="0,1")
    with pytest.raises(RuntimeError, match=r"cuda:1, but PyTorch sees 1 CUDA GPU\(s\): name only GPUs 0..0"):
        config.resolved_devices()


def parser_of(module) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser()
    module.add_arguments(parser)
    return parser


@pytest.mark.parametrize("front_end", [run_cli, serve_cli])
def test_gpus_flag_reaches_run_and_serve(front_end, capsys):
    args = parser_of(front_end).parse_args(["--gpus", "0,1"])
    assert args.devices == ("cuda:0", "cuda:1")
    assert EngineConfig.from_args(args).devices == ("cuda:0", "cuda:1")
    with pytest.raises(SystemExit):
        parser_of(front_end).parse_args(["--gpus", "first,second"])
    assert "GPU indices such as 0,1" in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_gpus_on_a_machine_without_cuda_says_so(capsys):
    with pytest.raises(RuntimeError, match="sees 0 CUDA GPU"):
        Engine(EngineConfig(MODEL, devices="0,1"))
    assert run_cli.run(parser_of(run_cli).parse_args(["abc", "--gpus", "0,1"])) == 1
    assert "PyTorch sees 0 CUDA GPU(s): see `lazymoe doctor`" in capsys.readouterr().err
