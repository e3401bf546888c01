"""Experts per budget and format (lazymoe.quant.capacity): bytes as the GGUF files store them,
slots as the engine sizes them, and the hit rate of the engine's own cache bookkeeping."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

from lazymoe import catalog
from lazymoe.bench.shapes import QWEN3_30B_A3B
from lazymoe.engine.parts.trace import RoutingTrace
from lazymoe.quant import QuantError
from lazymoe.quant.capacity import cache_hit_rate, capacity, expert_nbytes, projection_formats


@dataclass(frozen=True)
class Shape:
    hidden_size: int = 256
    moe_intermediate_size: int = 512
    num_layers: int = 8
    num_experts: int = 4


@pytest.mark.parametrize(("fmt", "bytes_per_32_weights"), [("bf16", 64), ("q8_0", 34), ("q4_0", 18)])
def test_a_single_format_stores_all_three_matrices_alike(fmt, bytes_per_32_weights):
    weights = 3 * 256 * 512
    assert expert_nbytes(fmt, 256, 512) == weights // 32 * bytes_per_32_weights


def test_q4_k_m_puts_down_in_q6_k_in_the_layers_llama_cpp_gives_more_bits():
    # 8 layers: the first and last eighth (layers 0 and 7), and every third from layer 1 on (3, 6)
    downs = [projection_formats("q4_k_m", layer, 8)[2] for layer in range(8)]
    assert [i for i, f in enumerate(downs) if f == "q6_k"] == [0, 3, 6, 7]
    assert projection_formats("Q4_K_M", 1, 8) == ("q4_k", "q4_k", "q4_k")
    q4_k_expert = 3 * 256 * 512 // 256 * 144
    q6_k_down = 256 * 512 // 256 * 210
    assert expert_nbytes("q4_k_m", 256, 512, layer=1, num_layers=8) == q4_k_expert
    assert expert_nbytes("q4_k_m", 256, 512, layer=3, num_layers=8) == q4_k_expert * 2 // 3 + q6_k_down


def test_expert_bytes_are_what_a_q4_k_m_gguf_file_stores_per_layer(tmp_path):
    from gguf_models import wide_random_gguf

    from lazymoe.engine.storage.gguf_file import GGUFExpertStore

    store = GGUFExpertStore.open(wide_random_gguf(tmp_path, "q4_k_m"))
    layers = store.moe_layers
    got = [expert_nbytes("q4_k_m", 256, 256, layer, len(layers)) for layer in layers]
    assert got == [store.expert_qbytes(layer) for layer in layers]
    assert len(set(got)) == 2  # the file mixes formats across layers


def test_slots_are_sized_for_the_largest_expert_and_capped_at_every_expert():
    cap = capacity("q4_k_m", 10**6, Shape())
    sizes = [expert_nbytes("q4_k_m", 256, 512, layer, 8) for layer in range(8)]
    assert cap.slot_nbytes == max(sizes) and cap.mean_nbytes == sum(sizes) / 8
    assert cap.slots == 10**6 // max(sizes) and cap.total_experts == 32
    assert cap.resident_fraction == cap.slots / 32 and cap.label == "Q4_K_M"
    assert capacity("q4_0", 10**9, Shape()).slots == 32  # room for more: still every expert once


def test_q4_k_m_experts_of_qwen3_30b_a3b_average_the_catalog_bits_per_weight():
    cap = capacity("q4_k_m", 8 * 10**9, QWEN3_30B_A3B)
    assert cap.bits_per_weight == pytest.approx(catalog.weight_format("Q4_K_M").expert_bits, abs=0.01)
    bf16 = capacity("bf16", 8 * 10**9, QWEN3_30B_A3B)
    assert bf16.bits_per_weight == 16 and bf16.slots == 8 * 10**9 // (3 * 2048 * 768 * 2)
    q4_0 = capacity("q4_0", 8 * 10**9, QWEN3_30B_A3B)
    assert 3.5 < q4_0.slots / bf16.slots < 3.6  # 16 bits against 4.5


def test_the_hit_rate_is_the_engine_cache_bookkeeping_on_the_trace():
    shape = Shape(num_layers=1, num_experts=4)
    trace = RoutingTrace(np.array([0, 1, 0, 1, 2, 0]).reshape(6, 1, 1), num_experts=4)
    one_slot = capacity("bf16", expert_nbytes("bf16", 256, 512), shape)
    two_slots = capacity("bf16", 2 * expert_nbytes("bf16", 256, 512), shape)
    assert cache_hit_rate(trace, one_slot) == 0.0
    # LRU with 2 slots: 0 miss, 1 miss, 0 hit, 1 hit, 2 miss (evicts 0), 0 miss
    assert cache_hit_rate(trace, two_slots) == pytest.approx(2 / 6)
    assert cache_hit_rate(trace, capacity("bf16", 10**9, shape)) == 1.0  # all loaded up front


def test_bad_inputs_say_what_to_give():
    with pytest.raises(QuantError, match="q4_k_m"):
        expert_nbytes("q3_k_s", 256, 512)
    with pytest.raises(ValueError, match="8 GB = 8"):
        capacity("bf16", 0, Shape())
    trace = RoutingTrace(np.tile([0, 1], (3, 1, 1)), num_experts=4)
    with pytest.raises(ValueError, match="same model"):
        cache_hit_rate(trace, capacity("bf16", 10**6, Shape()))
    with pytest.raises(ValueError, match="give at least"):
        cache_hit_rate(trace, capacity("bf16", expert_nbytes("bf16", 256, 512), Shape(num_layers=1)))
