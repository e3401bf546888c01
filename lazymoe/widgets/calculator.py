"""The speed calculator as a notebook widget: choose a machine and a model, see what fits and how fast.

    from lazymoe.widgets.calculator import CalculatorWidget
    CalculatorWidget(gpu="RTX 4060 Laptop", model="Qwen3-30B-A3B")

Wiring only: every number comes from `lazymoe.calculator` (plan, size_curve, case_studies);
this file turns controls into its inputs and its results into a figure and a few lines of text.
"""

from __future__ import annotations

import html

import ipywidgets as w
import plotly.graph_objects as go
from IPython.display import display

from lazymoe import calculator as calc
from lazymoe import catalog

NO_GPU = "(no GPU)"
CONTEXTS = [512, 1024, 2048, 4096, 8192, 16384, 32768, 65536, 131072]
TIER_COLORS = {"weights": "#4c78a8", "KV": "#f58518", "overhead": "#9d9d9d", "cache": "#54a24b",
               "experts": "#b279a2", "staging": "#e45756", "streamed": "#72b7b2"}


def _color(label: str) -> str:
    return next((c for key, c in TIER_COLORS.items() if key in label), "#bab0ac")


class CalculatorWidget:
    """Controls on the left, verdict and charts on the right; `.plan` is what is shown."""

    def __init__(self, gpu: str | None = "RTX 4060 Laptop", host: str = "Laptop, DDR5-5600 dual channel",
                 ram_gb: int = 32, model: str = "Qwen3-30B-A3B", fmt: str | None = "Q4_K_M",
                 context: int = 4096, batch: int = 1, strategy: str = "auto") -> None:
        hw = catalog.all_hardware()
        gpus = [n for n, h in hw.items() if h.kind == "gpu"]
        hosts = [n for n, h in hw.items() if h.kind != "gpu"]
        style = {"description_width": "110px"}
        layout = w.Layout(width="360px")
        self.gpu = w.Dropdown(options=[NO_GPU, *gpus], value=catalog.hardware(gpu).name if gpu else NO_GPU,
                              description="GPU", style=style, layout=layout)
        self.gpu_count = w.BoundedIntText(value=1, min=1, max=8, description="GPUs", style=style,
                                          layout=layout)
        self.nvlink = w.Checkbox(value=False, description="GPUs linked by NVLink", indent=False)
        self.host = w.Dropdown(options=hosts, value=catalog.hardware(host).name,
                               description="CPU / memory", style=style, layout=layout)
        self.ram_gb = w.IntSlider(value=ram_gb, min=4, max=512, step=4, description="RAM (GiB)",
                                  style=style, layout=layout)
        self.model = w.Dropdown(options=list(catalog.all_models()), value=catalog.model(model).name,
                                description="model", style=style, layout=layout)
        self.fmt = w.Dropdown(options=list(catalog.all_formats()), description="format", style=style,
                              layout=layout,
                              value=catalog.weight_format(fmt or catalog.model(model).native_format).name)
        self.context = w.SelectionSlider(options=CONTEXTS, value=context, description="context",
                                         style=style, layout=layout)
        self.batch = w.IntSlider(value=batch, min=1, max=64, description="batch", style=style,
                                 layout=layout)
        self.strategy = w.Dropdown(options=[("auto: fastest that fits", "auto"),
                                            *[(f"{k}: {v}", k) for k, v in calc.DESCRIPTIONS.items()]],
                                   value=strategy, description="strategy", style=style, layout=layout)
        self.set_hit_rate = w.Checkbox(value=False, indent=False,
                                       description="set the expert-cache hit rate myself")
        self.hit_rate = w.FloatSlider(value=0.85, min=0.0, max=1.0, step=0.01, description="hit rate",
                                      style=style, layout=layout, disabled=True)
        self.summary = w.HTML()
        self.stack_out, self.curve_out = w.Output(), w.Output()
        self.plan: calc.Plan | None = None
        self.cases = calc.case_studies()
        self.error: str = ""
        self.stack_figure = go.Figure()
        self.curve_figure = go.Figure()
        controls = w.VBox([w.HTML("<b>Machine</b>"), self.gpu, self.gpu_count, self.nvlink, self.host,
                           self.ram_gb, w.HTML("<b>Workload</b>"), self.model, self.fmt, self.context,
                           self.batch, w.HTML("<b>Strategy</b>"), self.strategy, self.set_hit_rate,
                           self.hit_rate])
        self.widget = w.HBox([controls, w.VBox([self.summary, self.stack_out, self.curve_out])])
        for control in (self.gpu, self.gpu_count, self.nvlink, self.host, self.ram_gb, self.model,
                        self.fmt, self.context, self.batch, self.strategy, self.set_hit_rate,
                        self.hit_rate):
            control.observe(self.update, names="value")
        self.update()

    # ---- inputs -> calculator ----------------------------------------------------------------
    def machine(self) -> calc.Machine:
        gpu = None if self.gpu.value == NO_GPU else catalog.hardware(self.gpu.value)
        return calc.Machine(catalog.hardware(self.host.value), self.ram_gb.value * 2**30, gpu,
                            gpu_count=self.gpu_count.value,
                            use_nvlink=self.nvlink.value and bool(gpu and gpu.nvlink_gbps))

    def workload(self) -> calc.Workload:
        return calc.Workload(catalog.model(self.model.value),
                             catalog.weight_format(self.fmt.value).bits_per_weight,
                             context_tokens=self.context.value, batch=self.batch.value)

    def options(self) -> dict:
        use = self.set_hit_rate.value and self.strategy.value == "expert_cache"
        return {"hit_rate": self.hit_rate.value} if use else {}

    # ---- calculator -> display ---------------------------------------------------------------
    def update(self, *_) -> None:
        self.hit_rate.disabled = not self.set_hit_rate.value
        self.gpu_count.disabled = self.gpu.value == NO_GPU
        try:
            machine, workload = self.machine(), self.workload()
            self.plan = calc.plan(machine, workload, self.strategy.value, **self.options())
            self.error = ""
        except calc.CalculatorError as exc:
            self.plan, self.error = None, str(exc)
            self.summary.value = f"<p style='color:#b35900'><b>Cannot compute:</b> {html.escape(self.error)}</p>"
            return
        self.summary.value = self._summary_html(self.plan)
        self.stack_figure = self._stack_figure(self.plan)
        self.curve_figure = self._curve_figure(machine, workload)
        for out, fig in ((self.stack_out, self.stack_figure), (self.curve_out, self.curve_figure)):
            out.clear_output(wait=True)
            with out:
                fig.show()

    @staticmethod
    def _summary_html(p: calc.Plan) -> str:
        color = "#b00020" if not p.fits else ("#1a7f37" if p.tok_s >= 10 else "#b35900")
        notes = "".join(f"<li>{html.escape(n)}</li>" for n in p.notes)
        prefill = f", prefill up to {p.prefill.tok_s:,.0f} tok/s (compute)" if p.prefill else ""
        return (f"<div style='font-size:15px'><b style='color:{color}'>{html.escape(p.verdict.label)}"
                f"</b> &mdash; {html.escape(p.verdict.sentence)}<br>"
                f"strategy <b>{p.strategy}</b>: decode at most <b>{p.tok_s:.3g} tok/s</b>, "
                f"bottleneck <b>{html.escape(p.bottleneck)}</b>{prefill}</div>"
                f"<div style='font-size:12px;color:#555'>{html.escape(p.decode.detail)}"
                f"<ul style='margin:2px'>{notes}</ul></div>")

    @staticmethod
    def _stack_figure(p: calc.Plan) -> go.Figure:
        fig = go.Figure()
        tiers = [t for t in ("VRAM", "RAM", "disk") if p.memory.total(t) > 0 or t in p.memory.capacity]
        for tier, label, n_bytes in p.memory.items:
            if n_bytes > 0:
                fig.add_bar(name=f"{tier}: {label}", x=[tier], y=[n_bytes / 2**30],
                            marker_color=_color(label), hovertemplate="%{y:.2f} GiB")
        for tier, cap in p.memory.capacity.items():
            if tier in tiers:
                i = tiers.index(tier)
                fig.add_shape(type="line", x0=i - 0.45, x1=i + 0.45, y0=cap / 2**30, y1=cap / 2**30,
                              line={"color": "black", "width": 3, "dash": "dash"})
                usable = " usable" if tier == "RAM" else ""
                fig.add_annotation(x=tier, y=cap / 2**30, text=f"{tier}: {cap / 2**30:.0f} GiB{usable}",
                                   showarrow=False, yshift=10)
        fig.update_layout(barmode="stack", height=330, width=620, title="Where the bytes go",
                          yaxis_title="GiB", xaxis={"categoryorder": "array", "categoryarray": tiers},
                          legend={"font": {"size": 10}}, margin={"t": 40, "b": 30})
        return fig

    def _curve_figure(self, machine: calc.Machine, workload: calc.Workload) -> go.Figure:
        points = calc.size_curve(machine, workload.bits_per_weight)
        fig = go.Figure()
        fig.add_scatter(x=[p.params_total / 1e9 for p in points], y=[p.tok_s or None for p in points],
                        mode="lines+markers", name="dense model, best plan that fits",
                        text=[f"{p.strategy}: {p.verdict}" for p in points])
        p = self.plan
        fig.add_scatter(x=[workload.model.params_total / 1e9], y=[p.tok_s], mode="markers",
                        marker={"size": 14, "symbol": "star"}, name=f"{workload.model.name} (you)")
        cases = self.cases
        fig.add_scatter(x=[c.workload.model.params_total / 1e9 for c in cases],
                        y=[c.reported_tok_s for c in cases], mode="markers",
                        marker={"size": 10, "symbol": "diamond"}, name="case studies (reported)",
                        text=[f"{c.key}: {c.title}" for c in cases])
        fig.update_layout(height=330, width=620, xaxis_type="log", yaxis_type="log",
                          xaxis_title="parameters (billions)", yaxis_title="decode tok/s (bound)",
                          title="Bound tok/s vs model size on this machine",
                          legend={"font": {"size": 10}}, margin={"t": 40, "b": 30})
        return fig

    def _ipython_display_(self) -> None:
        display(self.widget)


def show(**kwargs) -> CalculatorWidget:
    """Display the calculator in a notebook and return it (its `.plan` is what it shows)."""
    widget = CalculatorWidget(**kwargs)
    display(widget.widget)
    return widget
