"""The calculator widget, headless: it shows exactly what the calculator computes."""

from __future__ import annotations

import pytest

pytest.importorskip("ipywidgets")

from lazymoe import calculator as calc
from lazymoe.widgets.calculator import NO_GPU, CalculatorWidget


def expected(widget: CalculatorWidget, strategy: str = "auto", **options) -> calc.Plan:
    machine = calc.Machine.from_names(widget.host.value, widget.ram_gb.value,
                                      gpu=None if widget.gpu.value == NO_GPU else widget.gpu.value,
                                      gpu_count=widget.gpu_count.value)
    workload = calc.Workload.from_names(widget.model.value, widget.fmt.value,
                                        context_tokens=widget.context.value, batch=widget.batch.value)
    return calc.plan(machine, workload, strategy, **options)


def test_initial_view_matches_the_calculator():
    widget = CalculatorWidget(gpu="RTX 4060 Laptop", model="Qwen3-30B-A3B", fmt="Q4_K_M")
    plan = expected(widget)
    assert widget.plan.tok_s == pytest.approx(plan.tok_s)
    assert f"{plan.tok_s:.3g} tok/s" in widget.summary.value
    assert plan.bottleneck in widget.summary.value and plan.verdict.label in widget.summary.value


def test_changing_controls_recomputes_and_redraws():
    widget = CalculatorWidget(gpu="RTX 4090", model="Llama-3.1-8B", fmt="Q4_K_M")
    assert widget.plan.strategy == "full_gpu"
    widget.model.value = "Llama-3.1-70B"
    assert widget.plan.tok_s == pytest.approx(expected(widget).tok_s)
    assert widget.plan.strategy != "full_gpu"
    widget.gpu.value = NO_GPU
    assert widget.plan.strategy == "cpu_only"
    assert widget.plan.tok_s == pytest.approx(expected(widget).tok_s)
    # the memory chart's bars add up to the plan's memory per tier
    bars = [t for t in widget.stack_figure.data if t.type == "bar"]
    total = sum(b.y[0] for b in bars if b.x[0] == "RAM")
    assert total == pytest.approx(widget.plan.memory.total("RAM") / 2**30)


def test_hit_rate_slider_drives_the_expert_cache():
    widget = CalculatorWidget(gpu="RTX 3070 Ti Laptop", model="Qwen3-Coder-Next-80B", fmt="FP8",
                              ram_gb=32)
    widget.strategy.value = "expert_cache"
    widget.set_hit_rate.value = True
    widget.hit_rate.value = 0.5
    low = widget.plan.tok_s
    widget.hit_rate.value = 0.95
    assert widget.plan.tok_s > low
    assert widget.plan.tok_s == pytest.approx(expected(widget, "expert_cache", hit_rate=0.95).tok_s)


def test_size_plot_has_the_case_studies_and_a_verdict_for_each_size():
    widget = CalculatorWidget()
    names = [t.name for t in widget.curve_figure.data]
    assert "case studies (reported)" in names
    cases = next(t for t in widget.curve_figure.data if t.name == "case studies (reported)")
    assert sorted(cases.y) == sorted(c.reported_tok_s for c in calc.case_studies())


def test_an_impossible_choice_is_explained_not_raised():
    widget = CalculatorWidget(gpu="RTX 4090", model="Llama-3.1-8B")
    widget.strategy.value = "cpu_moe"
    assert widget.plan is None and "dense" in widget.summary.value
