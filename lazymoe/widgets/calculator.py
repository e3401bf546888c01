"""The speed calculator as a notebook widget: choose a machine and a model, see what fits and how fast.

    from lazymoe.widgets.calculator import CalculatorWidget
    CalculatorWidget(gpu="RTX 4060 Laptop", model="Qwen3-30B-A3B")

Wiring only: every number comes from `lazymoe.calculator` (plan, size_curve, case_studies,
default_bandwidths, load_measured); this file turns controls into its inputs and its results into
two charts and a few lines of text. Layout: a fixed-width column of controls on the left (it never
shrinks, so no value is ever hidden), results on the right, their text wrapping to the space left.
"""

from __future__ import annotations

import html

import ipywidgets as w
import plotly.graph_objects as go
from IPython.display import display

from lazymoe import calculator as calc
from lazymoe import catalog
from lazymoe.i18n import _

NO_GPU = "(no GPU)"  # dropdown values; their labels are translated where the dropdowns are built
SHIPPED = "(the format's own mix)"
CONTEXTS = [512, 1024, 2048, 4096, 8192, 16384, 32768, 65536, 131072]
CONTROL_WIDTH = "430px"  # the control column: fixed, so no control loses its value; wide enough
# for the longest name in a dropdown ("AMD EPYC 9654 (12-channel DDR5-4800)") beside a 130px label
TIER_COLORS = {"weights": "#4c78a8", "KV": "#f58518", "overhead": "#9d9d9d", "cache": "#54a24b",
               "experts": "#b279a2", "staging": "#e45756", "streamed": "#72b7b2"}
TEXT_STYLE = "white-space:normal;overflow-wrap:anywhere;line-height:1.4"


def _color(label: str) -> str:
    """A memory item's color, by a key word of its label in English or in the learner's language."""
    # each translation is a word of the translated labels (lazymoe.calculator.strategies)
    local = {"weights": _("weights"), "overhead": _("overhead"), "cache": _("cache"),
             "experts": _("experts"), "staging": _("staging"), "streamed": _("streamed")}
    return next((c for key, c in TIER_COLORS.items() if key in label or local.get(key, key) in label),
                "#bab0ac")


class CalculatorWidget:
    """Controls on the left, verdict and two stacked charts on the right; `.plan` is what is shown."""

    def __init__(self, gpu: str | None = "RTX 4060 Laptop", host: str = "Laptop, DDR5-5600 dual channel",
                 ram_gb: int = 32, model: str = "Qwen3-30B-A3B", fmt: str | None = "Q4_K_M",
                 context: int = 4096, batch: int = 1, strategy: str = "auto") -> None:
        hw = catalog.all_hardware()
        gpus = [n for n, h in hw.items() if h.kind == "gpu"]
        hosts = [n for n, h in hw.items() if h.kind != "gpu"]
        style = {"description_width": "130px"}
        row = w.Layout(width="100%")
        self._quiet = 0   # > 0 while the widget itself sets control values (no recompute)
        try:
            self.measured, measured_error = calc.load_measured(), ""
        except calc.CalculatorError as exc:
            self.measured, measured_error = None, str(exc)

        self.gpu = w.Dropdown(options=[(_("(no GPU)"), NO_GPU), *[(n, n) for n in gpus]],
                              value=catalog.hardware(gpu).name if gpu else NO_GPU,
                              description="GPU", style=style, layout=row)
        self.gpu_count = w.BoundedIntText(value=1, min=1, max=8, description=_("GPUs"), style=style,
                                          layout=row)
        self.nvlink = w.Checkbox(value=False, description=_("GPUs linked by NVLink"), indent=False)
        self.host = w.Dropdown(options=hosts, value=catalog.hardware(host).name,
                               description=_("CPU / memory"), style=style, layout=row)
        self.ram_gb = w.IntSlider(value=ram_gb, min=4, max=512, step=4, description=_("RAM (GiB)"),
                                  style=style, layout=row)
        self.use_measured = w.Checkbox(value=False, indent=False, disabled=self.measured is None,
                                       description=_("use my measured numbers (lab01)"))
        self.measured_note = w.HTML(self._measured_note(measured_error))
        self.vram_gbps = w.BoundedFloatText(min=0, max=100_000, step=1, description=_("VRAM GB/s"),
                                            style=style, layout=row)
        self.ram_gbps = w.BoundedFloatText(min=0, max=100_000, step=1, description=_("RAM GB/s"),
                                           style=style, layout=row)
        self.link_gbps = w.BoundedFloatText(min=0, max=10_000, step=0.5, description=_("host link GB/s"),
                                            style=style, layout=row)
        self.model = w.Dropdown(options=list(catalog.all_models()), value=catalog.model(model).name,
                                description=_("model"), style=style, layout=row)
        self.fmt = w.Dropdown(options=list(catalog.all_formats()), description=_("format (experts)"),
                              style=style, layout=row,
                              value=catalog.weight_format(fmt or catalog.model(model).native_format).name)
        self.other_fmt = w.Dropdown(options=[(_("(the format's own mix)"), SHIPPED),
                                             *[(n, n) for n in catalog.all_formats()]],
                                    value=SHIPPED, description=_("format (the rest)"), style=style, layout=row)
        self.context = w.SelectionSlider(options=CONTEXTS, value=context, description=_("context"),
                                         style=style, layout=row)
        self.batch = w.IntSlider(value=batch, min=1, max=64, description=_("batch"), style=style,
                                 layout=row)
        self.strategy = w.Dropdown(options=[(_("auto: fastest that fits"), "auto"),
                                            *[(k, k) for k in calc.DESCRIPTIONS]],
                                   value=strategy, description=_("strategy"), style=style, layout=row)
        self.strategy_note = w.HTML()
        self.hit_rate = w.FloatSlider(value=0.85, min=0.0, max=1.0, step=0.01, description=_("hit rate"),
                                      style=style, layout=row)
        self.uniform = w.Button(description=_("hit rate of uniform routing"), layout=row,
                                tooltip=_("cache / all experts: what random routing would give"))
        self.summary = w.HTML(layout=w.Layout(width="100%"))
        self.stack_out, self.curve_out = w.Output(), w.Output()
        self.plan: calc.Plan | None = None
        self.cases = calc.case_studies()
        self.error: str = ""
        self.stack_figure = go.Figure()
        self.curve_figure = go.Figure()

        def heading(text: str) -> w.HTML:
            return w.HTML(f"<b>{text}</b>")

        controls = w.VBox(
            [heading(_("Machine")), self.gpu, self.gpu_count, self.nvlink, self.host, self.ram_gb,
             heading(_("Bandwidths (datasheet, or what you measured)")), self.use_measured,
             self.measured_note, self.vram_gbps, self.ram_gbps, self.link_gbps,
             heading(_("Workload")), self.model, self.fmt, self.other_fmt, self.context, self.batch,
             heading(_("Strategy")), self.strategy, self.strategy_note, self.hit_rate, self.uniform],
            layout=w.Layout(width=CONTROL_WIDTH, min_width=CONTROL_WIDTH, flex="0 0 " + CONTROL_WIDTH))
        results = w.VBox([self.summary, self.stack_out, self.curve_out],
                         layout=w.Layout(flex="1 1 0%", min_width="0", overflow="hidden"))
        self.widget = w.HBox([controls, results], layout=w.Layout(
            width="100%", flex_flow="row nowrap", align_items="flex-start", grid_gap="16px"))
        self.widget.add_class("lazymoe-calculator")
        for control in (self.gpu, self.host, self.use_measured):
            control.observe(self._refill_bandwidths, names="value")
        for control in (self.gpu_count, self.nvlink, self.ram_gb, self.vram_gbps, self.ram_gbps,
                        self.link_gbps, self.model, self.fmt, self.other_fmt, self.context,
                        self.batch, self.strategy):
            control.observe(self.update, names="value")
        self.hit_rate.observe(self._hit_rate_moved, names="value")
        self.uniform.on_click(self._uniform_hit_rate)
        self._refill_bandwidths()

    # ---- inputs -> calculator ----------------------------------------------------------------
    def _gpu_spec(self):
        return None if self.gpu.value == NO_GPU else catalog.hardware(self.gpu.value)

    def machine(self) -> calc.Machine:
        gpu = self._gpu_spec()
        host = catalog.hardware(self.host.value)
        measured = self.measured.machine_kwargs() if self.use_measured.value and self.measured else {}
        return calc.Machine(host, self.ram_gb.value * 2**30, gpu,
                            gpu_count=self.gpu_count.value,
                            use_nvlink=self.nvlink.value and bool(gpu and gpu.nvlink_gbps),
                            disk_gbps=measured.get("disk_gbps", calc.workload.DISK_GBPS),
                            effective_ram_gbps=self.ram_gbps.value,
                            effective_vram_gbps=self.vram_gbps.value if gpu else None,
                            effective_link_gbps=self.link_gbps.value if gpu else None)

    def workload(self) -> calc.Workload:
        other = None if self.other_fmt.value == SHIPPED else self.other_fmt.value
        return calc.Workload.from_names(self.model.value, self.fmt.value, other,
                                        context_tokens=self.context.value, batch=self.batch.value)

    def options(self) -> dict:
        return {"hit_rate": self.hit_rate.value} if self.strategy.value == "expert_cache" else {}

    # ---- control state -----------------------------------------------------------------------
    def _set(self, control, value) -> None:
        self._quiet += 1
        try:
            control.value = value
        finally:
            self._quiet -= 1

    def _measured_note(self, error: str = "") -> str:
        if error:
            text = error
        elif self.measured is None:
            text = _("Nothing measured yet: lab01's measurement cell saves your machine's numbers.")
        else:
            text = self.measured.describe()
        return f"<div style='font-size:12px;color:#555;{TEXT_STYLE}'>{html.escape(text)}</div>"

    def _refill_bandwidths(self, *_) -> None:
        """Start the three GB/s fields from the datasheet, or from lab01's measurements."""
        gpu = self._gpu_spec()
        measured = self.measured if self.use_measured.value else None
        figures = calc.default_bandwidths(gpu, catalog.hardware(self.host.value), measured)
        for control, key in ((self.vram_gbps, "vram_gbps"), (self.ram_gbps, "ram_gbps"),
                             (self.link_gbps, "link_gbps")):
            value = figures[key]
            self._set(control, value or 0.0)
            control.disabled = value is None
        self.update()

    def _hit_rate_moved(self, *_) -> None:
        """The learner's hit rate is what is computed: under "auto" (live only when auto chose
        the expert cache) moving it switches the strategy to expert_cache, which takes a hit rate."""
        if self._quiet:
            return
        if self.strategy.value != "expert_cache":
            self._set(self.strategy, "expert_cache")
        self.update()

    def _uniform_hit_rate(self, *_) -> None:
        try:
            uniform = calc.expert_cache(self.machine(), self.workload(), hit_rate=None)
        except calc.CalculatorError:
            return
        self.hit_rate.value = round(uniform.options["hit_rate"], 2)

    def _sync_controls(self) -> None:
        """Enable what the current choice uses, and make the hit rate show what was computed."""
        self.gpu_count.disabled = self.gpu.value == NO_GPU
        self.other_fmt.disabled = not catalog.model(self.model.value).has_expert_shapes
        strategy = self.strategy.value
        self.strategy_note.value = (
            f"<div style='font-size:12px;color:#555;{TEXT_STYLE}'>"
            f"{html.escape(calc.DESCRIPTIONS.get(strategy, _('the fastest strategy that fits')))}</div>")
        options = self.plan.options if self.plan is not None else {}
        used, chosen = options.get("hit_rate"), strategy == "expert_cache"
        if used is not None and (not chosen or used != self.hit_rate.value):
            self._set(self.hit_rate, round(used, 2))   # auto's choice, or 1 when everything fits
        # live whenever the plan shown is the expert cache (chosen, or auto's pick), unless the
        # cache holds every expert: then the hit rate is 1 whatever the slider says
        cache_shown = self.plan is not None and self.plan.strategy == "expert_cache"
        self.hit_rate.disabled = not cache_shown or bool(options.get("everything_fits"))
        self.uniform.disabled = self.hit_rate.disabled

    # ---- calculator -> display ---------------------------------------------------------------
    def update(self, *_) -> None:
        if self._quiet:
            return
        try:
            machine, workload = self.machine(), self.workload()
            self.plan = calc.plan(machine, workload, self.strategy.value, **self.options())
            self.error = ""
        except (calc.CalculatorError, catalog.CatalogError) as exc:
            self._show_error(str(exc))
            return
        self._sync_controls()
        self.summary.value = self._summary_html(self.plan, machine, workload)
        self.stack_figure = self._stack_figure(self.plan)
        self.curve_figure = self._curve_figure(machine, workload)
        for out, fig in ((self.stack_out, self.stack_figure), (self.curve_out, self.curve_figure)):
            out.clear_output(wait=True)
            with out:
                fig.show()

    def _show_error(self, message: str) -> None:
        """No stale charts: clear both, and say what to change."""
        self.plan, self.error = None, message
        self._sync_controls()
        self.stack_figure, self.curve_figure = go.Figure(), go.Figure()
        for out in (self.stack_out, self.curve_out):
            out.clear_output()   # now, not at the next output: no stale chart stays on screen
        self.summary.value = (f"<div style='font-size:15px;color:#b35900;{TEXT_STYLE}'>"
                              f"<b>{_('Cannot compute this choice.')}</b> {html.escape(message)}</div>")

    @staticmethod
    def _summary_html(p: calc.Plan, machine: calc.Machine, workload: calc.Workload) -> str:
        color = "#b00020" if not p.fits else ("#1a7f37" if p.tok_s >= 10 else "#b35900")
        notes = "".join(f"<li>{html.escape(n)}</li>" for n in p.notes)
        prefill = _(", prefill up to {tok_s:,.0f} tok/s (compute)").format(tok_s=p.prefill.tok_s) if p.prefill else ""
        speed = _("strategy <b>{strategy}</b>: decode at most <b>{tok_s:.3g} tok/s</b>, "
                  "bottleneck <b>{bottleneck}</b>").format(strategy=p.strategy, tok_s=p.tok_s,
                                                           bottleneck=html.escape(p.bottleneck))
        return (f"<div style='font-size:15px;{TEXT_STYLE}'><b style='color:{color}'>"
                f"{html.escape(p.verdict.label)}</b> &mdash; {html.escape(p.verdict.sentence)}<br>"
                f"{speed}{html.escape(prefill)}</div>"
                f"<div style='font-size:12px;color:#555;{TEXT_STYLE}'>"
                + html.escape(_("{model} at {formats}: {read}").format(
                    model=workload.model.name, formats=workload.describe_formats(),
                    read=workload.describe_read()))
                + f"<br>{html.escape(p.decode.detail)}"
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
                text = (_("{tier}: {gib:.0f} GiB usable") if tier == "RAM" else _("{tier}: {gib:.0f} GiB")).format(
                    tier=tier, gib=cap / 2**30)
                fig.add_annotation(x=tier, y=cap / 2**30, text=text,
                                   showarrow=False, yshift=10)
        fig.update_layout(barmode="stack", height=330, autosize=True,
                          title=_("Where the bytes go (dashed: what each memory holds)"),
                          yaxis_title="GiB", xaxis={"categoryorder": "array", "categoryarray": tiers},
                          legend={"font": {"size": 10}}, margin={"t": 40, "b": 30, "l": 50, "r": 10})
        return fig

    def _curve_figure(self, machine: calc.Machine, workload: calc.Workload) -> go.Figure:
        points = calc.size_curve(machine, workload.bits_per_weight)
        fig = go.Figure()
        fig.add_scatter(x=[p.params_total / 1e9 for p in points], y=[p.tok_s or None for p in points],
                        mode="lines+markers", name=_("dense model, best plan that fits"),
                        text=[f"{p.strategy}: {p.verdict}" for p in points])
        p = self.plan
        fig.add_scatter(x=[workload.model.params_total / 1e9], y=[p.tok_s], mode="markers",
                        marker={"size": 14, "symbol": "star"}, name=_("{model} (you)").format(model=workload.model.name))
        cases = self.cases
        fig.add_scatter(x=[c.workload.model.params_total / 1e9 for c in cases],
                        y=[c.reported_tok_s for c in cases], mode="markers",
                        marker={"size": 10, "symbol": "diamond"}, name=_("case studies (reported)"),
                        text=[f"{c.key}: {c.title}" for c in cases])
        fig.update_layout(height=330, autosize=True, xaxis_type="log", yaxis_type="log",
                          xaxis_title=_("parameters (billions)"), yaxis_title=_("decode tok/s (bound)"),
                          title=_("Bound tok/s vs model size on this machine"),
                          legend={"font": {"size": 10}}, margin={"t": 40, "b": 30, "l": 50, "r": 10})
        return fig

    def _ipython_display_(self) -> None:
        display(self.widget)


def show(**kwargs) -> CalculatorWidget:
    """Display the calculator in a notebook and return it (its `.plan` is what it shows)."""
    widget = CalculatorWidget(**kwargs)
    display(widget.widget)
    return widget
