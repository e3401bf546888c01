"""Experts read from a GGUF file: views into its map, in their own format, and pools of stored bytes."""

from __future__ import annotations

import gguf
import numpy as np
import pytest
import torch
from gguf_models import twin, wide_random_gguf

from lazymoe.engine.storage.gguf_file import GGUFError, GGUFExpertStore
from lazymoe.engine.storage.qpool import QuantizedPool
from lazymoe.engine.storage.store import ExpertStore
from lazymoe.paths import bundled_model_dir

ROLES = ("gate", "up", "down")


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return tmp_path_factory.mktemp("gguf")


@pytest.mark.parametrize("out_type", ["q8_0", "q4_0"])
def test_expert_bytes_are_views_into_the_map_and_decode_like_gguf(folder, out_type):
    path = twin(out_type, folder)
    store = ExpertStore.open(path)  # a .gguf path opens the GGUF store
    assert isinstance(store, GGUFExpertStore)
    assert (store.num_experts, store.intermediate_size, store.hidden_size) == (16, 128, 128)
    reader = gguf.GGUFReader(path)
    tensors = {t.name: t for t in reader.tensors}
    base = store._reader.data.ctypes.data
    end = base + store._reader.data.nbytes
    q = store.read_quantized(2, 5)
    assert q.formats == (out_type,) * 3
    for role in ROLES:
        t = getattr(q, role)
        assert base <= t.data.data_ptr() < end  # inside the file's map: no copy was made
        ref = tensors[f"blk.2.ffn_{role}_exps.weight"]
        want = gguf.quants.dequantize(np.asarray(ref.data), ref.tensor_type)[5]  # (out, in)
        np.testing.assert_array_equal(t.dequantize().numpy(), want)
    # the float32 read is the same numbers, and close to the checkpoint the file came from
    original = ExpertStore.open(bundled_model_dir()).read(2, 5)
    w = store.read(2, 5)
    for role in ROLES:
        assert torch.equal(getattr(w, role), getattr(q, role).dequantize())
        err = (getattr(w, role) - getattr(original, role)).abs().max()
        assert 0 < err < (0.01 if out_type == "q8_0" else 0.05)
    assert (
        q.nbytes
        == store.expert_qbytes(2)
        == 3 * 128 * 128 * (34 if out_type == "q8_0" else 18) // 32
    )


def test_an_experts_views_are_made_once_and_dropped_on_close(folder):
    """A miss asks for the same expert's views again and again: the second read is the same
    object (no new views, no checks), a wrong key still fails clearly, close() lets the map go."""
    store = GGUFExpertStore.open(twin("q4_0", folder))
    first = store.read_quantized(1, 3)
    assert store.read_quantized(1, 3) is first
    assert store.read_quantized(1, 4) is not first
    assert first.gate.data.data_ptr() != store.read_quantized(1, 4).gate.data.data_ptr()
    with pytest.raises(KeyError, match=r"experts 0\.\.15"):
        store.read_quantized(1, 16)
    store.close()
    assert not store._views


def test_q4_k_m_mixes_formats_per_layer(folder):
    store = GGUFExpertStore.open(wide_random_gguf(folder))
    assert store.formats(0) == ("q4_k", "q4_k", "q4_k")
    assert store.formats(2) == ("q4_k", "q4_k", "q6_k")  # llama.cpp's "more bits" layers
    small, big = store.expert_qbytes(0), store.expert_qbytes(3)
    assert small == 3 * 256 * 144 and big == 2 * 256 * 144 + 256 * 210
    assert store.max_expert_qbytes == big


def test_pool_holds_stored_bytes_of_any_layer(folder):
    store = GGUFExpertStore.open(wide_random_gguf(folder))
    pool = QuantizedPool(2, store.max_expert_qbytes)
    assert pool.nbytes == 2 * store.max_expert_qbytes
    for slot, key in ((0, (0, 1)), (1, (3, 7)), (0, (2, 4))):  # slot 0 refilled with another layout
        assert pool.fill(slot, store.read_quantized(*key)) == store.expert_qbytes(key[0])
        got, want = pool.expert(slot), store.read_quantized(*key)
        for role in ROLES:
            a, b = getattr(got, role), getattr(want, role)
            assert (a.format, a.shape) == (b.format, b.shape)
            assert torch.equal(a.data, b.data) and a.data.data_ptr() != b.data.data_ptr()
    small = QuantizedPool(1, store.expert_qbytes(0))
    with pytest.raises(ValueError, match="does not fit"):
        small.fill(0, store.read_quantized(3, 0))


def _tiny_gguf(path, tensor_type):
    """A minimal qwen3moe GGUF whose experts are `tensor_type`."""
    w = gguf.GGUFWriter(str(path), "qwen3moe")
    for key, value in (
        ("context_length", 64),
        ("embedding_length", 32),
        ("block_count", 1),
        ("expert_count", 2),
        ("expert_used_count", 1),
        ("expert_feed_forward_length", 32),
        ("attention.head_count", 2),
        ("vocab_size", 8),
    ):
        w.add_uint32(f"qwen3moe.{key}", value)
    w.add_float32("qwen3moe.attention.layer_norm_rms_epsilon", 1e-6)
    for role in ROLES:
        data = gguf.quants.quantize(np.ones((2, 32, 32), np.float32), tensor_type)
        w.add_tensor(f"blk.0.ffn_{role}_exps.weight", data, raw_dtype=tensor_type)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_unsupported_type_names_it_and_the_supported_ones(tmp_path):
    path = _tiny_gguf(tmp_path / "q5_0.gguf", gguf.GGMLQuantizationType.Q5_0)
    with pytest.raises(
        GGUFError, match=r"Q5_0.*Supported: F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q4_K, Q5_K, Q6_K"
    ):
        GGUFExpertStore.open(path)
    ok = GGUFExpertStore.open(_tiny_gguf(tmp_path / "q8.gguf", gguf.GGMLQuantizationType.Q8_0))
    assert ok.read_quantized(0, 1).formats == ("q8_0",) * 3


def test_not_a_gguf_file_is_a_clear_error(tmp_path):
    bad = tmp_path / "model.gguf"
    bad.write_bytes(b"not a gguf file at all")
    with pytest.raises(GGUFError, match="not a readable GGUF"):
        GGUFExpertStore.open(bad)


def test_a_dense_model_is_refused_with_a_reason(tmp_path):
    w = gguf.GGUFWriter(str(tmp_path / "dense.gguf"), "llama")
    w.add_uint32("llama.block_count", 1)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(GGUFError, match="not a mixture-of-experts model"):
        GGUFExpertStore.open(tmp_path / "dense.gguf")
