"""The calculator: every bound and strategy against numbers worked out by hand.

Fixtures use round numbers (1000 GB/s VRAM, 100 GB/s RAM, 8-bit weights, no runtime overhead)
so each expected value below is arithmetic you can redo on paper.
"""

from __future__ import annotations

import math

import pytest

from lazymoe import calculator as calc
from lazymoe.catalog import HardwareSpec, ModelSpec

GB = 1e9
GPU = HardwareSpec("test GPU", "gpu", 1000.0, memory_bytes=int(16e9), pcie_gen=4, pcie_lanes=16,
                   nvlink_gbps=200.0, fp16_tflops=100.0, source="test")
CPU = HardwareSpec("test CPU", "cpu", 100.0, source="test")
PCIE = 1.969 * 16   # GB/s, PCIe 4.0 x16
DENSE = ModelSpec("dense-10B", "dense", 10e9, layers=10, hidden=4096)
MOE = ModelSpec("moe-11B", "moe", 11e9, params_active=3e9, layers=10, hidden=2048, experts=10,
                experts_per_token=2, params_per_expert=0.1e9, params_outside_experts=1e9)


def machine(vram_bytes=16e9, ram_bytes=64e9, **kw) -> calc.Machine:
    gpu = HardwareSpec(**{**GPU.__dict__, "memory_bytes": int(vram_bytes)})
    return calc.Machine(CPU, int(ram_bytes), gpu, gpu_overhead_bytes=0, ram_reserve_bytes=0, **kw)


def dense(**kw) -> calc.Workload:
    return calc.Workload(DENSE, 8, **kw)   # 10 GB of weights, 1 GB per layer


def moe(**kw) -> calc.Workload:
    # experts: 10 layers x 10 x 0.1B = 10 GB (1 GB per layer); active 10 x 2 x 0.1B = 2 GB; outside 1 GB
    return calc.Workload(MOE, 8, **kw)


# ---- the basic bound -------------------------------------------------------------------------
def test_source_module_example_700_gbps_over_14_gb_is_50_tok_s():
    assert calc.decode_bound_tok_s(700, 14e9) == pytest.approx(50.0)


def test_decode_bound_names_its_resource_and_rejects_nonsense():
    b = calc.decode_bound(700, 14e9, resource="VRAM")
    assert b.tok_s == pytest.approx(50.0) and b.bottleneck == "VRAM"
    assert b.ms_per_token == pytest.approx(20.0)
    with pytest.raises(calc.CalculatorError, match="bytes_per_token"):
        calc.decode_bound_tok_s(700, 0)


def test_expert_cache_bound_is_resident_at_vram_plus_misses_at_link():
    b = calc.expert_cache_bound(1e9, 2e9, hit_rate=0.75, vram_bandwidth_gbps=1000, link_bandwidth_gbps=25)
    t = 3e9 / 1000e9 + 0.25 * 2e9 / 25e9
    assert b.tok_s == pytest.approx(1 / t)
    assert b.bottleneck == "PCIe"
    assert calc.expert_cache_bound_tok_s(1e9, 2e9, 1.0, 1000, 25) == pytest.approx(1000 / 3)
    overlapped = calc.expert_cache_bound(1e9, 2e9, 0.75, 1000, 25, overlap=True)
    assert overlapped.tok_s == pytest.approx(1 / max(3e9 / 1000e9, 0.5e9 / 25e9))
    with pytest.raises(calc.CalculatorError, match="hit_rate"):
        calc.expert_cache_bound(1e9, 2e9, 1.5, 1000, 25)


def test_hit_rate_needed_inverts_the_expert_cache_bound():
    h = calc.hit_rate_needed(50, 1e9, 2e9, 1000, 25)
    assert calc.expert_cache_bound_tok_s(1e9, 2e9, h, 1000, 25) == pytest.approx(50)
    assert calc.hit_rate_needed(1, 1e9, 2e9, 1000, 25) == 0.0        # a cold cache is fast enough
    assert calc.hit_rate_needed(400, 1e9, 2e9, 1000, 25) > 1.0       # VRAM alone is too slow


def test_prefill_bound_is_flops_over_two_per_parameter():
    b = calc.prefill_bound(100, 10e9)
    assert b.tok_s == pytest.approx(100e12 / (2 * 10e9)) and b.bottleneck == "compute"


# ---- bytes ---------------------------------------------------------------------------------
def test_kv_cache_is_context_batch_layers_heads_dim_and_bytes():
    spec = ModelSpec("kv", "dense", 1e9, layers=32, kv_heads=8, head_dim=128)
    w = calc.Workload(spec, 16, context_tokens=4096, batch=2)
    assert w.kv_cache_bytes == 4096 * 2 * 32 * 2 * 8 * 128 * 2
    assert calc.Workload(spec, 16, kv_bits=8).kv_cache_bytes == 4096 * 32 * 2 * 8 * 128


def test_moe_reads_shared_weights_plus_top_k_experts():
    w = moe()
    assert w.expert_bytes == pytest.approx(10e9)
    assert w.outside_bytes == pytest.approx(1e9)
    assert w.weights_read_per_step == pytest.approx(1e9 + 2e9)


def test_batching_touches_more_experts_but_never_more_than_all():
    assert moe(batch=1).experts_touched_per_layer() == pytest.approx(2)
    assert moe(batch=2).experts_touched_per_layer() == pytest.approx(10 * (1 - 0.8**2))
    assert moe(batch=1000).experts_touched_per_layer() == pytest.approx(10)


def test_input_embedding_is_not_read_per_token():
    spec = ModelSpec("emb", "dense", 10e9, params_input_embedding=1e9)
    assert calc.Workload(spec, 8).weights_read_per_step == pytest.approx(9e9)


# ---- strategies, each against hand-computed values ---------------------------------------------
def test_full_gpu_reads_everything_from_vram():
    p = calc.full_gpu(machine(), dense())
    assert p.tok_s == pytest.approx(1000 / 10) and p.bottleneck == "VRAM" and p.fits
    assert p.prefill.tok_s == pytest.approx(100e12 / 20e9)
    assert not calc.full_gpu(machine(vram_bytes=8e9), dense()).fits


def test_batch_of_four_reads_the_weights_once_for_four_tokens():
    assert calc.full_gpu(machine(), dense(batch=4)).tok_s == pytest.approx(4 * 1000 / 10)


def test_cpu_only_reads_everything_from_ram():
    p = calc.cpu_only(machine(), dense())
    assert p.tok_s == pytest.approx(100 / 10) and p.bottleneck == "RAM"


def test_layer_split_adds_gpu_and_cpu_shares():
    p = calc.layer_split(machine(), dense(), gpu_layers=4)
    assert p.tok_s == pytest.approx(1 / (4e9 / 1000e9 + 6e9 / 100e9))
    assert p.bottleneck == "RAM" and p.offloaded
    assert p.memory.total("VRAM") == pytest.approx(4e9) and p.memory.total("RAM") == pytest.approx(6e9)
    assert "-ngl 4" in p.notes[0]


def test_layer_split_puts_as_many_layers_on_the_gpu_as_fit():
    assert calc.layer_split(machine(vram_bytes=4.5e9), dense()).memory.total("VRAM") == pytest.approx(4e9)


def test_layer_streaming_moves_non_resident_layers_over_pcie_every_token():
    p = calc.layer_streaming(machine(), dense(), resident_layers=4)
    assert p.tok_s == pytest.approx(1 / (10e9 / 1000e9 + 6e9 / (PCIE * GB)))
    assert p.bottleneck.startswith("PCIe 4.0")


def test_layer_streaming_reads_what_ram_cannot_hold_from_disk():
    m = machine(ram_bytes=3e9, disk_gbps=2.0)
    p = calc.layer_streaming(m, dense(), resident_layers=4)
    assert p.tok_s == pytest.approx(1 / (10e9 / 1000e9 + 3e9 / (PCIE * GB) + 3e9 / 2e9))
    assert p.bottleneck == "disk" and p.memory.total("disk") == pytest.approx(3e9)


def test_layer_streaming_of_an_moe_moves_all_experts_of_a_layer():
    p = calc.layer_streaming(machine(), moe(), resident_layers=0)
    assert p.tok_s == pytest.approx(1 / (3e9 / 1000e9 + 11e9 / (PCIE * GB)))


def test_cpu_moe_computes_the_experts_of_n_layers_from_ram():
    all_cpu = calc.cpu_moe(machine(), moe(), n_cpu_moe=10)
    assert all_cpu.tok_s == pytest.approx(1 / (1e9 / 1000e9 + 2e9 / 100e9))
    half = calc.cpu_moe(machine(), moe(), n_cpu_moe=5)
    assert half.tok_s == pytest.approx(1 / (2e9 / 1000e9 + 1e9 / 100e9))
    assert half.memory.total("VRAM") == pytest.approx(1e9 + 5e9)
    assert "--n-cpu-moe 5" in half.notes[0]


def test_cpu_moe_moves_as_few_expert_layers_to_the_cpu_as_vram_allows():
    p = calc.cpu_moe(machine(vram_bytes=4.5e9), moe())   # 1 GB resident + 3 layers of experts
    assert p.memory.total("RAM") == pytest.approx(7e9)
    with pytest.raises(calc.CalculatorError, match="dense"):
        calc.cpu_moe(machine(), dense())


def test_expert_cache_with_a_given_hit_rate():
    p = calc.expert_cache(machine(), moe(), hit_rate=0.75, cache_bytes=5e9)
    assert p.tok_s == pytest.approx(1 / (3e9 / 1000e9 + 0.25 * 2e9 / (PCIE * GB)))
    assert p.bottleneck.startswith("PCIe")


def test_expert_cache_default_hit_rate_is_the_cached_share_under_uniform_routing():
    p = calc.expert_cache(machine(vram_bytes=6e9), moe())   # 5 GB of 10 GB of experts cached
    assert p.tok_s == pytest.approx(1 / (3e9 / 1000e9 + 0.5 * 2e9 / (PCIE * GB)))
    assert "uniform" in p.notes[0]


def test_expert_cache_misses_beyond_ram_come_from_disk():
    m = machine(vram_bytes=6e9, ram_bytes=2.5e9, disk_gbps=2.0)   # RAM holds half the 5 GB left
    p = calc.expert_cache(m, moe(), hit_rate=0.5)
    misses = 0.5 * 2e9
    t = 3e9 / 1000e9 + 0.5 * misses / (PCIE * GB) + 0.5 * misses / 2e9
    assert p.tok_s == pytest.approx(1 / t) and p.bottleneck == "disk"


def test_multi_gpu_layer_split_sends_one_vector_per_boundary():
    m = machine(vram_bytes=6e9, gpu_count=2)
    p = calc.multi_gpu(m, dense())
    assert p.fits   # 10 GB over 2 x 6 GB
    assert p.tok_s == pytest.approx(1 / (10e9 / 1000e9 + 4096 * 2 / (PCIE * GB)))
    assert not calc.full_gpu(m, dense()).fits


def test_multi_gpu_tensor_split_reads_in_parallel_and_all_reduces_twice_per_layer():
    m = machine(vram_bytes=6e9, gpu_count=2, use_nvlink=True)
    p = calc.multi_gpu(m, dense(), mode="tensor")
    link_s = 10 * 2 * 2 * 0.5 * 4096 * 2 / (100 * GB)   # NVLink 200 GB/s both ways = 100 each
    assert p.tok_s == pytest.approx(1 / (5e9 / 1000e9 + link_s))


def test_multi_gpu_needs_two_gpus():
    with pytest.raises(calc.CalculatorError, match="number of GPUs to 2 or more"):
        calc.multi_gpu(machine(), dense())


# ---- plans, verdicts, fitting -----------------------------------------------------------------
def test_auto_plan_takes_the_fastest_strategy_that_fits():
    assert calc.plan(machine(), dense()).strategy == "full_gpu"
    small = calc.plan(machine(vram_bytes=4.5e9), moe())
    assert small.fits and small.strategy in ("cpu_moe", "expert_cache")
    with pytest.raises(calc.CalculatorError, match="unknown strategy"):
        calc.plan(machine(), dense(), "warp_drive")


def test_compare_says_why_a_strategy_does_not_apply():
    out = calc.compare(machine(), dense())
    assert isinstance(out["full_gpu"], calc.Plan)
    assert "dense" in out["cpu_moe"]


@pytest.mark.parametrize(("fits", "offloaded", "tok_s", "label"), [
    (True, False, 50, "comfortable"), (True, True, 50, "comfortable with offload"),
    (True, False, 5, "usable"), (True, True, 2, "runs with offload, slow"),
    (True, True, 0.1, "runs with offload, very slow"), (False, False, 500, "does not fit"),
])
def test_verdict_words(fits, offloaded, tok_s, label):
    assert calc.verdict(fits, offloaded, tok_s).label == label


def test_where_it_fits():
    assert calc.where_it_fits(dense(), machine()) == "VRAM"
    assert calc.where_it_fits(dense(), machine(vram_bytes=6e9, gpu_count=2)) == "VRAM (2 GPUs)"
    assert calc.where_it_fits(dense(), machine(vram_bytes=4e9)) == "RAM"
    assert calc.where_it_fits(dense(), machine(vram_bytes=4e9, ram_bytes=7e9)) == "VRAM + RAM"
    assert calc.where_it_fits(dense(), machine(vram_bytes=1e9, ram_bytes=2e9)) == "disk"


def test_unified_memory_machine_uses_its_one_memory_for_the_gpu():
    mac = calc.Machine.from_names("Apple M4 Max", gpu_overhead_bytes=0)
    p = calc.full_gpu(mac, dense())
    assert p.tok_s == pytest.approx(546 / 10) and p.bottleneck == "unified memory"
    with pytest.raises(calc.CalculatorError, match="one shared memory"):
        calc.layer_split(mac, dense())


def test_machine_rejects_a_gpu_passed_as_host():
    with pytest.raises(calc.CalculatorError, match="host="):
        calc.Machine(GPU, int(32e9))


def test_size_curve_falls_as_models_grow():
    pts = calc.size_curve(machine(), 8, sizes_b=(1, 10, 100))
    assert pts[0].tok_s > pts[1].tok_s > pts[2].tok_s
    assert pts[0].strategy == "full_gpu"
    assert math.isclose(pts[1].tok_s, 1000 / 10)
