"""The benchmark model writer: one set of random weights, as safetensors and as a GGUF, same bits."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from lazymoe.bench.shapes import TINY
from lazymoe.bench.writer import set_routing, write_model


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny-random")
    write_model(TINY, out)
    return out


def test_writes_a_checkpoint_transformers_loads_without_missing_weights(tiny_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model, info = AutoModelForCausalLM.from_pretrained(tiny_dir, dtype=torch.float32, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    ids = AutoTokenizer.from_pretrained(tiny_dir)("hi there")["input_ids"]
    assert ids == list(b"hi there")  # byte-level: one token per byte
    assert torch.isfinite(model(torch.tensor([ids])).logits).all()


def test_the_gguf_holds_the_same_bits_as_the_safetensors(tiny_dir):
    import gguf
    from safetensors.torch import load_file

    tensors = load_file(tiny_dir / "model.safetensors")
    reader = gguf.GGUFReader(tiny_dir / "model-bf16.gguf")
    by_name = {t.name: t for t in reader.tensors}
    q = tensors["model.layers.1.self_attn.q_proj.weight"].view(torch.uint16).numpy()
    assert np.array_equal(np.asarray(by_name["blk.1.attn_q.weight"].data).view(np.uint16).reshape(q.shape), q)
    # experts: one fused (E, I, D) tensor in the GGUF, one per expert in the safetensors
    fused = np.asarray(by_name["blk.0.ffn_up_exps.weight"].data).view(np.uint16).reshape(TINY.num_experts, -1)
    expert3 = tensors["model.layers.0.mlp.experts.3.up_proj.weight"].view(torch.uint16).numpy().ravel()
    assert np.array_equal(fused[3], expert3)


def test_set_routing_rescales_only_the_router_rows_once(tiny_dir, tmp_path):
    import shutil

    from safetensors.torch import load_file

    copy = tmp_path / "zipf"
    shutil.copytree(tiny_dir, copy)
    set_routing(copy, routing="zipf", skew=1.0)
    before, after = load_file(tiny_dir / "model.safetensors"), load_file(copy / "model.safetensors")
    changed = sorted(k for k in before if not torch.equal(before[k], after[k]))
    assert changed == [f"model.layers.{i}.mlp.gate.weight" for i in range(TINY.num_layers)]
    ratio = after[changed[0]].float().norm(dim=1) / before[changed[0]].float().norm(dim=1)
    assert ratio.max() == pytest.approx(1.0, rel=0.02) and ratio.min() < 0.2  # (rank+1)^-1 over 8 experts
    assert json.loads((copy / "config.json").read_text())["lazymoe_bench"]["routing"] == "zipf"
    with pytest.raises(ValueError, match="once"):
        set_routing(copy, routing="zipf")


def test_writing_the_two_files_separately_gives_the_same_bits(tiny_dir, tmp_path):
    # the 61 GB benchmark model is written one file at a time, to fit in RAM
    write_model(TINY, tmp_path, formats=("gguf",))
    assert not (tmp_path / "model.safetensors").exists()
    assert (tmp_path / "model-bf16.gguf").read_bytes() == (tiny_dir / "model-bf16.gguf").read_bytes()
    (tmp_path / "model-bf16.gguf").unlink()
    write_model(TINY, tmp_path, formats=("safetensors",))
    assert (tmp_path / "model.safetensors").read_bytes() == (tiny_dir / "model.safetensors").read_bytes()
    with pytest.raises(ValueError, match="formats"):
        write_model(TINY, tmp_path, formats=("onnx",))


def test_the_benchmark_gguf_is_what_the_exporter_writes_from_its_safetensors(tiny_dir, tmp_path):
    """One GGUF writer: exporting the benchmark's own checkpoint gives the same tensors and keys."""
    import gguf

    from lazymoe.models.gguf_export import export_gguf

    exported = export_gguf(tiny_dir, tmp_path / "exported.gguf", "bf16", tokenizer_pre="qwen2",
                           progress=False)
    ours, theirs = gguf.GGUFReader(tiny_dir / "model-bf16.gguf"), gguf.GGUFReader(exported)
    assert [t.name for t in ours.tensors] == [t.name for t in theirs.tensors]
    for a, b in zip(ours.tensors, theirs.tensors, strict=True):
        assert a.tensor_type == b.tensor_type, a.name
        assert np.array_equal(np.asarray(a.data), np.asarray(b.data)), a.name
    keys = [k for k in ours.fields if k != "general.name"]
    assert keys == [k for k in theirs.fields if k != "general.name"]
    for key in keys:
        fa, fb = ours.fields[key], theirs.fields[key]
        assert [bytes(fa.parts[i]) for i in fa.data] == [bytes(fb.parts[i]) for i in fb.data], key
    tokens = ours.fields["tokenizer.ggml.tokens"]
    assert len(tokens.data) == TINY.vocab_size  # padded to the embedding's rows
