"""The engine runs a GGUF file directly: experts stay quantized in RAM slots and are computed from
their stored bytes; greedy tokens equal transformers running the dequantized weights (float32)."""

from __future__ import annotations

import pytest
import torch
from gguf_models import PROMPT, twin, wide_random_gguf

from lazymoe.engine import Engine, EngineConfig
from lazymoe.engine.config import GenerationConfig
from lazymoe.engine.loading import load_tokenizer
from lazymoe.engine.reference import full_model, reference_greedy
from lazymoe.engine.storage.gguf_file import GGUFExpertStore, write_dequantized_checkpoint
from lazymoe.engine.storage.pool import expert_nbytes
from lazymoe.engine.storage.qpool import QuantizedPool
from lazymoe.quant import kernels_int8

NEW_TOKENS = 12


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return tmp_path_factory.mktemp("engine-gguf")


@pytest.fixture(scope="module")
def files(folder):
    """out type -> (GGUF path, greedy tokens of transformers on its dequantized weights, prompt)."""
    out = {}
    for name, path in (
        ("q8_0", twin("q8_0", folder)),
        ("q4_0", twin("q4_0", folder)),
        ("q4_k_m", wide_random_gguf(folder)),
    ):
        reference_dir = write_dequantized_checkpoint(path, folder / f"dequantized-{name}")
        model = full_model(reference_dir)
        prompt = load_tokenizer(path).encode(PROMPT)  # from the file's metadata
        out[name] = (path, reference_greedy(model, prompt, NEW_TOKENS), prompt)
    return out


@pytest.mark.parametrize("name", ["q8_0", "q4_0", "q4_k_m"])
@pytest.mark.parametrize("budget", ["tight", "generous"])
@pytest.mark.parametrize("placement", ["fetch", "cpu"])
def test_tokens_equal_transformers_on_dequantized_weights(files, name, budget, placement):
    path, want, prompt = files[name]
    store = GGUFExpertStore.open(path)
    slot_nbytes = store.max_expert_qbytes
    vram_budget = 2 * slot_nbytes if budget == "tight" else None  # 2 slots: the top-k, no more
    engine = Engine(
        EngineConfig(
            model_path=path,
            device="cpu",
            dtype="float32",
            vram_budget=vram_budget,
            placement=placement,
        )
    )
    got = engine.generate(prompt, GenerationConfig(max_new_tokens=NEW_TOKENS, stop_token_ids=()))
    assert got == want
    # each decode step's experts in the RAM slots ran together (one parallel region per kind of
    # matmul), and still gave transformers' tokens
    assert engine.runtime.pooled_cpu_steps > 0
    pool = engine.tiers.device.pool
    assert isinstance(pool, QuantizedPool) and pool.slot_nbytes == slot_nbytes
    assert pool.n_slots == (2 if budget == "tight" else len(store.keys()))
    if budget == "tight":  # every transfer moved one expert's stored bytes, not a float copy
        stats = engine.tiers.as_dict()
        link = stats["links"]["disk->ram"]
        assert link["transfers"] >= stats["tiers"]["ram"]["misses"] > NEW_TOKENS
        for layer, nbytes in link["bytes_per_layer"].items():
            assert nbytes % store.expert_qbytes(layer) == 0
        assert (
            sum(n // store.expert_qbytes(layer) for layer, n in link["bytes_per_layer"].items())
            == link["transfers"]
        )


def test_reference_kernel_gives_the_same_tokens(files):
    path, want, prompt = files["q4_0"]
    engine = Engine(
        EngineConfig(model_path=path, device="cpu", kernel="reference", vram_budget="60KiB")
    )
    assert (
        engine.generate(prompt, GenerationConfig(max_new_tokens=NEW_TOKENS, stop_token_ids=()))
        == want
    )


@pytest.mark.parametrize("placement", ["fetch", "cpu"])
def test_int8_activations_run_llamacpps_arithmetic(files, placement, monkeypatch):
    """cpu_activations="int8": the experts go through the int8 kernels (a prompt's one expert at
    a time, a decode step's together), the logits move by about int8 rounding, no more, and the
    first tokens stay the same."""
    path, want, prompt = files["q4_0"]
    calls = []
    for name in ("qmatvec_int8", "qmatvec_int8_many"):
        real = getattr(kernels_int8, name)
        monkeypatch.setattr(kernels_int8, name,
                            lambda *a, real=real, name=name, **k: calls.append(name) or real(*a, **k))

    def engine(activations):
        return Engine(EngineConfig(model_path=path, device="cpu", vram_budget="60KiB",
                                   placement=placement, cpu_activations=activations))  # fmt: skip

    exact = engine("float").forward_logits(prompt)
    assert not calls
    fast = engine("int8")
    rounded = fast.forward_logits(prompt)
    assert set(calls) == {"qmatvec_int8"}  # the prompt: each expert on its tokens
    assert not torch.equal(rounded, exact)  # other arithmetic, other numbers
    assert (rounded - exact).norm() < 0.02 * exact.norm()  # about 1/254 of a block's largest input a layer
    got = fast.generate(prompt, GenerationConfig(max_new_tokens=4, stop_token_ids=()))
    assert got == want[:4]
    assert "qmatvec_int8_many" in calls and fast.runtime.pooled_cpu_steps > 0  # decode: together
    with pytest.raises(ValueError, match="cpu_activations='int4': choose one of float, int8"):
        EngineConfig(model_path=path, cpu_activations="int4")


def test_a_budget_holds_more_quantized_experts(files):
    path = files["q4_0"][0]
    budget = 8 * expert_nbytes(128, 128, torch.float32)  # 8 float32 experts of the bundled model
    engine = Engine(EngineConfig(model_path=path, device="cpu", vram_budget=budget))
    assert engine.tiers.device.pool.n_slots == budget // (
        3 * 128 * 128 * 18 // 32
    )  # 56 Q4_0 experts
    assert "q4_0" in repr(engine.store)


def test_engine_refuses_kernels_that_cannot_read_quantized_slots(files):
    with pytest.raises(ValueError, match="cannot compute quantized experts"):
        Engine(EngineConfig(model_path=files["q8_0"][0], device="cpu", kernel="batched"))


def test_segmented_decoder_says_it_cannot_run_quantized_experts(files, monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")  # the quantized kernels cannot run on this CPU
    with pytest.raises(ValueError, match=r"quantized experts .* need the quantized Triton kernels"):
        Engine(EngineConfig(model_path=files["q8_0"][0], device="cpu", decode="segments"))


def test_config_and_tokenizer_come_from_the_file(files):
    from lazymoe.engine.loading import load_config
    from lazymoe.paths import bundled_model_dir

    path = files["q8_0"][0]
    ours, original = load_config(path), load_config(bundled_model_dir())
    for field in ("hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
                  "head_dim", "moe_intermediate_size", "num_experts", "num_experts_per_tok",
                  "rms_norm_eps", "norm_topk_prob", "vocab_size", "tie_word_embeddings",
                  "max_position_embeddings"):  # fmt: skip
        assert getattr(ours, field) == getattr(original, field), field
    assert ours.rope_parameters["rope_theta"] == original.rope_parameters["rope_theta"]
    text = PROMPT + "    return [x ** 2 for x in range(10)]  # héllo\n"
    assert load_tokenizer(path).encode(text) == load_tokenizer(bundled_model_dir()).encode(text)
