"""GGUF export: the file has llama.cpp's names, shapes and types, and llama.cpp runs the same model.

The llama.cpp comparison uses the bundled model; it is skipped (with the reason printed) only
where llama-cpp-python is not installed.
"""

from __future__ import annotations

import json

import gguf
import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from lazymoe.models import bundled, corpus, recipe
from lazymoe.models.archs import ARCHS
from lazymoe.models.gguf_export import GGUFExportError, export_gguf
from lazymoe.models.tokenizer import as_transformers, train_tokenizer
from lazymoe.paths import bundled_model_dir

TINY = recipe.RecipeConfig(vocab_size=512, hidden_size=64, num_layers=2, num_heads=2,
                           num_kv_heads=1, head_dim=32, num_experts=4, top_k=2,
                           moe_intermediate_size=64, steps=2, warmup_steps=1)
PROMPT = "def load(self, path):\n    with open(path) as f:\n        return f.read()\n"


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    """A random 2-layer, 4-expert Qwen3-MoE with a 512-token tokenizer (HF layout)."""
    out = tmp_path_factory.mktemp("tiny-moe")
    texts = [f.text for f in corpus.source_files()[:20]]
    tok = as_transformers(train_tokenizer(texts, TINY.vocab_size), 1024)
    model = recipe.new_model(TINY, tok.eos_token_id)
    with torch.no_grad():  # larger random weights than the init, so outputs are not all ~0
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def _read(path):
    reader = gguf.GGUFReader(path)
    return reader, {t.name: t for t in reader.tensors}


@pytest.mark.parametrize("out_type,weight_type", [("f32", "F32"), ("f16", "F16"), ("bf16", "BF16"),
                                                  ("q8_0", "Q8_0")])
def test_export_writes_llamacpp_names_shapes_and_types(tiny_dir, tmp_path, out_type, weight_type):
    path = export_gguf(tiny_dir, tmp_path / f"tiny-{out_type}.gguf", out_type, progress=False)
    reader, tensors = _read(path)
    arch = reader.fields["general.architecture"]
    assert bytes(arch.parts[arch.data[0]]).decode() == "qwen3moe"
    e, d, i = TINY.num_experts, TINY.hidden_size, TINY.moe_intermediate_size
    # GGUF lists dims fastest-first: numpy (E, I, D) is ne = [D, I, E]
    assert list(tensors["blk.1.ffn_gate_exps.weight"].shape) == [d, i, e]
    assert list(tensors["blk.1.ffn_up_exps.weight"].shape) == [d, i, e]
    assert list(tensors["blk.1.ffn_down_exps.weight"].shape) == [i, d, e]
    assert tensors["blk.0.ffn_gate_exps.weight"].tensor_type.name == weight_type
    assert tensors["output.weight"].tensor_type.name == weight_type
    # norms and the router stay F32 in every format
    assert tensors["blk.0.ffn_gate_inp.weight"].tensor_type.name == "F32"
    assert tensors["blk.0.attn_q_norm.weight"].tensor_type.name == "F32"
    expected = 3 + TINY.num_layers * 12  # embd, norm, output + 12 per layer
    assert len(tensors) == expected


def test_expert_weights_land_in_the_right_slots(tiny_dir, tmp_path):
    path = export_gguf(tiny_dir, tmp_path / "tiny.gguf", "f32", progress=False)
    _, tensors = _read(path)
    state = load_file(tiny_dir / "model.safetensors")
    gate = np.asarray(tensors["blk.1.ffn_gate_exps.weight"].data)  # (E, I, D)
    down = np.asarray(tensors["blk.1.ffn_down_exps.weight"].data)  # (E, D, I)
    np.testing.assert_array_equal(gate[3], state["model.layers.1.mlp.experts.3.gate_proj.weight"].numpy())
    np.testing.assert_array_equal(down[2], state["model.layers.1.mlp.experts.2.down_proj.weight"].numpy())


def test_fused_and_per_expert_checkpoints_export_identically(tiny_dir, tmp_path):
    """transformers v5 keeps experts fused in memory; a checkpoint saved that way exports the same."""
    state = load_file(tiny_dir / "model.safetensors")
    fused_dir = tmp_path / "fused"
    fused_dir.mkdir()
    for f in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        (fused_dir / f).write_bytes((tiny_dir / f).read_bytes())
    out = {k: v for k, v in state.items() if ".mlp.experts." not in k}
    for layer in range(TINY.num_layers):
        p = f"model.layers.{layer}.mlp.experts"
        ex = range(TINY.num_experts)
        out[f"{p}.gate_up_proj"] = torch.stack([torch.cat([state[f"{p}.{e}.gate_proj.weight"],
                                                           state[f"{p}.{e}.up_proj.weight"]]) for e in ex])
        out[f"{p}.down_proj"] = torch.stack([state[f"{p}.{e}.down_proj.weight"] for e in ex])
    save_file(out, fused_dir / "model.safetensors")
    a = export_gguf(tiny_dir, tmp_path / "a.gguf", "q8_0", progress=False)
    b = export_gguf(fused_dir, tmp_path / "b.gguf", "q8_0", progress=False)
    _, ta = _read(a)
    _, tb = _read(b)
    for name in ta:
        np.testing.assert_array_equal(np.asarray(ta[name].data), np.asarray(tb[name].data), err_msg=name)


def test_unknown_type_or_architecture_is_refused_with_a_reason(tiny_dir, tmp_path):
    with pytest.raises(GGUFExportError, match="choose one of"):
        export_gguf(tiny_dir, tmp_path / "x.gguf", "q2_k")
    other = tmp_path / "deepseek"
    other.mkdir()
    (other / "config.json").write_text('{"model_type": "deepseek_v3"}')
    with pytest.raises(GGUFExportError, match="qwen3_moe, olmoe, qwen2_moe, mixtral"):
        export_gguf(other, tmp_path / "y.gguf")


def test_llamacpp_matches_transformers_on_the_bundled_model(tmp_path):
    llama_cpp = pytest.importorskip(
        "llama_cpp", reason="llama-cpp-python is not installed: GGUF logits not compared"
    )
    if bundled.problems():
        pytest.skip(f"bundled model missing: {bundled.problems()}")
    path = export_gguf(bundled_model_dir(), tmp_path / "tiny-moe-f32.gguf", "f32", progress=False)
    tok = bundled.load_tokenizer()
    ids = tok(PROMPT).input_ids
    llm = llama_cpp.Llama(str(path), logits_all=True, n_ctx=256, n_threads=1, verbose=False)
    assert llm.tokenize(PROMPT.encode(), add_bos=False, special=False) == ids
    assert llm.n_vocab() == len(tok)
    llm.eval(ids)
    theirs = np.array(llm.scores[: len(ids)])  # (T, V)
    with torch.no_grad():
        ours = bundled.load_model()(torch.tensor([ids])).logits[0].numpy()
    rel = np.abs(theirs - ours).max() / np.abs(ours).max()
    assert rel < 1e-3, f"llama.cpp logits differ by {rel:.2e} (relative to the largest logit)"
    assert (theirs.argmax(-1) == ours.argmax(-1)).all()


@pytest.mark.parametrize("out_type,min_top1_agreement", [("f16", 1.0), ("q8_0", 0.9)])
def test_llamacpp_runs_the_smaller_formats(tmp_path, out_type, min_top1_agreement):
    """F16 and Q8_0 lose a little precision (llama.cpp also quantizes activations for Q8_0 dot
    products, and a nudged router can pick another expert), so compare the predicted tokens."""
    llama_cpp = pytest.importorskip(
        "llama_cpp", reason="llama-cpp-python is not installed: GGUF formats not run"
    )
    if bundled.problems():
        pytest.skip(f"bundled model missing: {bundled.problems()}")
    path = export_gguf(bundled_model_dir(), tmp_path / f"tiny-moe-{out_type}.gguf", out_type,
                       progress=False)
    ids = bundled.load_tokenizer()(PROMPT).input_ids
    llm = llama_cpp.Llama(str(path), logits_all=True, n_ctx=256, n_threads=1, verbose=False)
    llm.eval(ids)
    theirs = np.array(llm.scores[: len(ids)])
    with torch.no_grad():
        ours = bundled.load_model()(torch.tensor([ids])).logits[0].numpy()
    agreement = float((theirs.argmax(-1) == ours.argmax(-1)).mean())
    assert agreement >= min_top1_agreement, f"{out_type}: next-token agreement {agreement:.0%}"


# -- every architecture in the registry ------------------------------------------------------------
def _overrides(arch) -> dict:
    """Config changes a tiny checkpoint needs before llama.cpp computes the same model."""
    if arch.qk_norm == "full":  # llama.cpp's olmoe: k_norm over all heads
        return {"num_key_value_heads": arch.tiny_config["num_attention_heads"]}
    return {}


@pytest.fixture(scope="module")
def arch_dirs(tmp_path_factory):
    from lazymoe.models.random import make_random_checkpoint

    root = tmp_path_factory.mktemp("archs")
    return {name: make_random_checkpoint(root / name, arch=name, seed=5, **_overrides(arch))
            for name, arch in ARCHS.items()}


def test_llamacpp_architecture_names_are_the_known_ones():
    assert {name: arch.gguf_arch for name, arch in ARCHS.items()} == {
        "qwen3_moe": "qwen3moe", "olmoe": "olmoe", "qwen2_moe": "qwen2moe", "mixtral": "llama"}


@pytest.mark.parametrize("arch", list(ARCHS))
def test_every_engine_architecture_exports_with_llamacpps_names(arch_dirs, tmp_path, arch):
    record = ARCHS[arch]
    path = export_gguf(arch_dirs[arch], tmp_path / f"{arch}.gguf", "q8_0", progress=False)
    reader, tensors = _read(path)
    field = reader.fields["general.architecture"]
    assert bytes(field.parts[field.data[0]]).decode() == record.gguf_arch
    for name in ("blk.0.ffn_gate_inp.weight", "blk.2.ffn_gate_exps.weight", "blk.2.ffn_up_exps.weight",
                 "blk.2.ffn_down_exps.weight", "blk.0.attn_q.weight", "output.weight"):
        assert name in tensors, name
    assert ("blk.1.ffn_gate_inp_shexp.weight" in tensors) == record.shared_expert
    assert ("blk.1.attn_q.bias" in tensors) == (arch == "qwen2_moe")
    assert ("blk.1.attn_k_norm.weight" in tensors) == (arch in ("qwen3_moe", "olmoe"))
    # the file holds exactly the registry's tensors, the names a GGUF reader looks up
    config = json.loads((arch_dirs[arch] / "config.json").read_text())
    assert list(tensors) == [slot.gguf_name for slot in record.tensors(config)]


@pytest.mark.parametrize("arch", list(ARCHS))
def test_llamacpp_matches_transformers_for_every_engine_architecture(arch_dirs, tmp_path, arch):
    """F32 logits on a fixed prompt agree within 1e-4 of the largest logit, every position.

    llama.cpp keeps its KV cache in F16 by default (an error of ~1e-3 of the logits on these
    models); with an F32 cache both sides compute in F32 and agree to ~1e-6."""
    llama_cpp = pytest.importorskip(
        "llama_cpp", reason="llama-cpp-python is not installed: GGUF logits not compared"
    )
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model_dir = arch_dirs[arch]
    path = export_gguf(model_dir, tmp_path / f"{arch}-f32.gguf", "f32", progress=False)
    ids = AutoTokenizer.from_pretrained(model_dir)(PROMPT).input_ids
    f32 = 0  # GGML_TYPE_F32, for the KV cache
    llm = llama_cpp.Llama(str(path), logits_all=True, n_ctx=256, n_threads=1, verbose=False,
                          type_k=f32, type_v=f32)
    assert llm.tokenize(PROMPT.encode(), add_bos=False, special=False) == ids
    llm.eval(ids)
    theirs = np.array(llm.scores[: len(ids)])
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        ours = model(torch.tensor([ids])).logits[0].numpy()
    rel = np.abs(theirs - ours).max() / np.abs(ours).max()
    assert rel < 1e-4, f"{arch}: llama.cpp logits differ by {rel:.2e} (relative to the largest logit)"
    assert (theirs.argmax(-1) == ours.argmax(-1)).all()


@pytest.mark.parametrize(
    ("arch", "overrides", "message"),
    [
        ("qwen3_moe", {"norm_topk_prob": False}, "always renormalizes"),
        ("olmoe", {"norm_topk_prob": True, "num_key_value_heads": 4}, "never renormalizes"),
        ("olmoe", {}, "num_key_value_heads == num_attention_heads"),
        ("qwen3_moe", {"mlp_only_layers": [1]}, "some layers are dense"),
    ],
)
def test_a_checkpoint_llamacpp_would_compute_differently_is_refused(tmp_path, arch, overrides, message):
    from lazymoe.models.random import make_random_checkpoint

    model_dir = make_random_checkpoint(tmp_path / arch, arch=arch, seed=2, **overrides)
    with pytest.raises(GGUFExportError, match=message):
        export_gguf(model_dir, tmp_path / "x.gguf", progress=False)
    assert not (tmp_path / "x.gguf").exists()  # refused before a byte is written
