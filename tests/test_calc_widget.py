"""The calculator widget, headless: it shows exactly what the calculator computes."""

from __future__ import annotations

import pytest

pytest.importorskip("ipywidgets")

from lazymoe import calculator as calc
from lazymoe.widgets.calculator import NO_GPU, SHIPPED, CalculatorWidget, _color


def expected(widget: CalculatorWidget, strategy: str = "auto", **options) -> calc.Plan:
    gpu = None if widget.gpu.value == NO_GPU else widget.gpu.value
    machine = calc.Machine.from_names(widget.host.value, widget.ram_gb.value, gpu=gpu,
                                      gpu_count=widget.gpu_count.value)
    other = None if widget.other_fmt.value == SHIPPED else widget.other_fmt.value
    workload = calc.Workload.from_names(widget.model.value, widget.fmt.value, other,
                                        context_tokens=widget.context.value, batch=widget.batch.value)
    return calc.plan(machine, workload, strategy, **options)


def test_initial_view_matches_the_calculator():
    widget = CalculatorWidget(gpu="RTX 4060 Laptop", model="Qwen3-30B-A3B", fmt="Q4_K_M")
    plan = expected(widget)
    assert widget.plan.tok_s == pytest.approx(plan.tok_s)
    assert f"{plan.tok_s:.3g} tok/s" in widget.summary.value
    assert plan.bottleneck in widget.summary.value and plan.verdict.label in widget.summary.value
    # the datasheet figures start the bandwidth fields
    assert (widget.vram_gbps.value, widget.ram_gbps.value) == (256.0, 89.6)
    assert widget.link_gbps.value == pytest.approx(1.969 * 8)   # PCIe 4.0 x8


def test_changing_controls_recomputes_and_redraws():
    widget = CalculatorWidget(gpu="RTX 4090", model="Llama-3.1-8B", fmt="Q4_K_M")
    assert widget.plan.strategy == "full_gpu"
    widget.model.value = "Llama-3.1-70B"
    assert widget.plan.tok_s == pytest.approx(expected(widget).tok_s)
    assert widget.plan.strategy != "full_gpu"
    widget.gpu.value = NO_GPU
    assert widget.plan.strategy == "cpu_only"
    assert widget.plan.tok_s == pytest.approx(expected(widget).tok_s)
    assert widget.link_gbps.disabled and widget.vram_gbps.disabled
    # the memory chart's bars add up to the plan's memory per tier
    bars = [t for t in widget.stack_figure.data if t.type == "bar"]
    total = sum(b.y[0] for b in bars if b.x[0] == "RAM")
    assert total == pytest.approx(widget.plan.memory.total("RAM") / 2**30)


def test_the_link_field_is_the_effective_rate_used():
    widget = CalculatorWidget(gpu="RTX 3090", model="Llama-3.1-70B", fmt="Q4_K_M", ram_gb=48)
    widget.strategy.value = "layer_streaming"
    before = widget.plan.tok_s
    widget.link_gbps.value = 6.5
    link = next(p for p in widget.plan.decode.parts if p.resource.startswith("PCIe"))
    assert link.bandwidth_gbps == 6.5 and widget.plan.tok_s < before
    widget.gpu.value = "RTX 4090"     # a new GPU starts from its own datasheet figure again
    assert widget.link_gbps.value == pytest.approx(31.5, abs=0.01)


def test_use_my_measured_numbers_fills_the_fields():
    assert CalculatorWidget().use_measured.disabled, "nothing measured yet: nothing to use"
    calc.save_measured(calc.MeasuredBandwidths(ram_gbps=41.0, vram_gbps=200.0, link_gbps=12.0,
                                               disk_gbps=2.0))
    widget = CalculatorWidget(gpu="RTX 4060 Laptop")
    assert not widget.use_measured.disabled and "41.0 GB/s" in widget.measured_note.value
    widget.use_measured.value = True
    assert (widget.vram_gbps.value, widget.ram_gbps.value, widget.link_gbps.value) == (200.0, 41.0, 12.0)
    assert widget.machine().disk_gbps == 2.0 and widget.machine().ram_gbps == 41.0
    widget.use_measured.value = False
    assert widget.ram_gbps.value == 89.6


def test_hit_rate_slider_is_live_for_the_expert_cache_and_is_what_is_computed():
    widget = CalculatorWidget(gpu="RTX 3070 Ti Laptop", model="Qwen3-Coder-Next-80B", fmt="FP8",
                              ram_gb=32)
    widget.strategy.value = "expert_cache"
    assert not widget.hit_rate.disabled
    widget.hit_rate.value = 0.5
    low = widget.plan.tok_s
    assert widget.plan.options["hit_rate"] == 0.5
    widget.hit_rate.value = 0.95
    assert widget.plan.tok_s > low
    assert widget.plan.tok_s == pytest.approx(expected(widget, "expert_cache", hit_rate=0.95).tok_s)
    widget.uniform.click()
    assert widget.hit_rate.value == pytest.approx(widget.plan.options["hit_rate"], abs=0.005)
    widget.strategy.value = "cpu_moe"
    assert widget.hit_rate.disabled


def test_under_auto_the_hit_rate_slider_is_live_when_auto_picks_the_expert_cache():
    widget = CalculatorWidget(gpu="RTX 4060 Laptop", model="Qwen3-30B-A3B", fmt="Q4_K_M")
    assert widget.plan.strategy == "cpu_moe" and widget.hit_rate.disabled, "no cache, no hit rate"
    widget.model.value = "Qwen3-Coder-Next-80B"
    widget.fmt.value = "FP8"
    auto = widget.plan
    assert widget.strategy.value == "auto" and auto.strategy == "expert_cache"
    assert not widget.hit_rate.disabled and not widget.uniform.disabled
    assert widget.hit_rate.value == round(auto.options["hit_rate"], 2)   # the rate auto used
    widget.hit_rate.value = 0.6   # the learner moves it: the cache at that rate, chosen for them
    assert widget.strategy.value == "expert_cache" and widget.plan.options["hit_rate"] == 0.6
    assert widget.plan.tok_s > auto.tok_s
    assert widget.plan.tok_s == pytest.approx(expected(widget, "expert_cache", hit_rate=0.6).tok_s)
    assert not widget.hit_rate.disabled
    widget.strategy.value = "auto"   # back to auto: its own (uniform routing) rate again
    assert widget.plan.tok_s == pytest.approx(auto.tok_s)
    assert widget.hit_rate.value == round(auto.options["hit_rate"], 2)


def test_when_everything_fits_the_chart_and_slider_say_hit_rate_one():
    widget = CalculatorWidget(gpu="RTX 4090", model="Qwen3-30B-A3B", fmt="Q4_K_M")
    widget.strategy.value = "expert_cache"
    widget.hit_rate.value = 0.46
    assert widget.plan.options["hit_rate"] == 1.0
    assert widget.hit_rate.value == 1.0 and widget.hit_rate.disabled
    assert widget.plan.bottleneck == "VRAM"
    names = [t.name for t in widget.stack_figure.data]
    assert any("128 of 128 per layer, hit rate 1.00" in n for n in names)
    assert "every expert fits in VRAM" in widget.summary.value


def test_an_error_clears_the_charts_and_says_what_to_change():
    widget = CalculatorWidget(gpu="RTX 4090", model="Llama-3.1-8B")
    assert widget.stack_figure.data
    widget.strategy.value = "multi_gpu"
    assert widget.plan is None
    assert not widget.stack_figure.data and not widget.curve_figure.data
    assert not widget.stack_out.outputs and not widget.curve_out.outputs
    assert "set the number of GPUs to 2 or more" in widget.summary.value
    widget.strategy.value = "cpu_moe"
    assert widget.plan is None and "dense" in widget.summary.value
    widget.strategy.value = "auto"
    assert widget.plan is not None and widget.stack_figure.data


def test_separate_formats_for_experts_and_the_rest():
    widget = CalculatorWidget(gpu="RTX 3090", model="GPT-OSS-120B", fmt="MXFP4")
    assert "MXFP4 experts, BF16 rest" in widget.summary.value
    widget.other_fmt.value = "Q8_0"
    assert widget.workload().other_bits_per_weight == 8.5
    assert widget.plan.tok_s == pytest.approx(expected(widget).tok_s)
    widget.model.value = "Llama-3.1-8B"
    assert widget.other_fmt.disabled


def test_bytes_per_token_are_labelled_as_in_the_lab():
    widget = CalculatorWidget(gpu="RTX 4090", model="Llama-3.1-8B", fmt="Q4_K_M")
    assert widget.workload().describe_read() in widget.summary.value


def test_size_plot_has_the_case_studies_and_a_verdict_for_each_size():
    widget = CalculatorWidget()
    names = [t.name for t in widget.curve_figure.data]
    assert "case studies (reported)" in names
    cases = next(t for t in widget.curve_figure.data if t.name == "case studies (reported)")
    assert sorted(cases.y) == sorted(c.reported_tok_s for c in calc.case_studies())


@pytest.mark.parametrize("lang", ["en", "ko"])
def test_every_memory_item_keeps_its_colour_in_either_language(monkeypatch, lang):
    monkeypatch.setenv("LAZYMOE_LANG", lang)
    labels, strategies = set(), set()
    for gpu, gpu_count, model in (("RTX 4060 Laptop", 1, "Qwen3-30B-A3B"), ("RTX 3090", 2, "Llama-3.1-70B"),
                                  ("RTX 4090", 1, "Qwen3-235B-A22B"), (None, 1, "Llama-3.1-8B")):
        machine = calc.Machine.from_names("Laptop, DDR5-5600 dual channel", 32, gpu=gpu, gpu_count=gpu_count)
        for p in calc.compare(machine, calc.Workload.from_names(model, "Q4_K_M")).values():
            if isinstance(p, calc.Plan):
                strategies.add(p.strategy)
                labels |= {label for _tier, label, _bytes in p.memory.items}
    assert {s.removesuffix("_layer") for s in strategies} == set(calc.DESCRIPTIONS), "every strategy's labels are looked at"
    grey = sorted(label for label in labels if _color(label) == "#bab0ac")
    assert not grey, f"memory items drawn in the catch-all grey (no colour for their label): {grey}"
