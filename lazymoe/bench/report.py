"""Read a results JSON: the roofline bound of each row, a text table, a plotly chart.

The bound of a row is the decode speed the machine allows at the row's measured hit rate: every
byte a token needs moves at the measured bandwidth of the memory or link it crosses, and the
three resources work at once (perfect overlap), so the slowest one sets the pace. That is the
physical limit; `overlap=False` gives the course calculator's serial bound (the parts added up).
With h the row's hit rate, c the share of the routed experts computed on the CPU, E the routed
experts' bytes per token and dense the rest of a token's bytes:

    GPU memory:       dense + (1 - c) E   at the GPU's read bandwidth
                      (hits, and fetched misses, which are read from VRAM after their copy)
    host link:        (1 - h - c) E       at pinned host-to-GPU bandwidth (fetched misses)
    CPU memory:       c E                 at the CPU's read bandwidth (misses computed there)

    lazymoe "fetch": c = 0;  "cpu" and llama.cpp --cpu-moe (h = 0): c = 1 - h;  "auto": c from the
    row's counts (a device-cache row's decode steps' own, decode_experts_on_cpu, else the
    generation's, experts_on_cpu), else the faster of the two;  llama.cpp --n-cpu-moe N of L
    layers: c = N / L, h = 1 - c;  no GPU: everything at CPU memory bandwidth.

h is 1 when every expert is resident (llama.cpp all on GPU, the full transformers model). The
bandwidths are measured on the machine that ran the benchmark (`lazymoe.bench.bandwidth`).
A GGUF-only model (schema lazymoe.bench/3) has two sets of byte counts: llama.cpp reads every
tensor as stored, lazymoe the experts as stored and the rest at its compute dtype. Every row
also carries its routing regime (`lazymoe.bench.routing`): a hit rate means nothing
without the routing that produced it.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from lazymoe.calculator import Part, bound_from_parts

GB = 1e9


def load(path: str | Path) -> dict:
    return json.loads(Path(path).read_text())


def _hit_rate(row: dict, num_layers: int | None = None) -> float | None:
    if row.get("engine") == "llamacpp":
        n_cpu_moe = row["options"].get("n_cpu_moe")
        if n_cpu_moe is not None and num_layers:
            return 1.0 - min(n_cpu_moe, num_layers) / num_layers
        return 0.0 if row["options"].get("cpu_moe") else 1.0
    if row.get("engine") == "hf":
        return 1.0 if row["options"].get("mode") == "full" else None
    if row.get("vram_budget_gb") is None:
        return 1.0  # lazymoe with every expert resident
    return row.get("hit_rate")


def _cpu_share(row: dict, h: float) -> float | None:
    """c above: the share of routed experts computed on the CPU; None: unknown (auto, no counts)."""
    placement = "cpu" if row.get("engine") == "llamacpp" else row.get("placement")
    if placement == "cpu":
        return 1.0 - h
    if placement in ("fetch", "gpu"):  # "gpu": fetch's old name, in results files before the rename
        return 0.0
    counted = _counted_cpu_share(row)
    return None if counted is None else min(1.0 - h, counted)


def _counted_cpu_share(row: dict) -> float | None:
    """The share of a row's experts its CPU computed, as counted: the decode steps' own where
    the row has them (a device-cache row), else the generation's, the prompt's included; None:
    no counts."""
    if row.get("decode_experts_on_cpu") is not None:
        on_cpu, on_device = row["decode_experts_on_cpu"], row.get("decode_experts_on_device")
    else:
        on_cpu, on_device = row.get("experts_on_cpu"), row.get("experts_on_device")
    if on_cpu is None or on_device is None or on_cpu + on_device == 0:
        return None
    return on_cpu / (on_cpu + on_device)


def roofline_tok_s(row: dict, model_bytes: dict, bandwidths: dict, overlap: bool = True,
                   num_layers: int | None = None) -> float | None:
    """The bound above for one result row; None when it does not apply (accelerate offload)."""
    gpu, cpu, h2d = (bandwidths.get(k) for k in ("gpu_read_gbps", "cpu_read_gbps", "h2d_pinned_gbps"))
    if not cpu:
        return None
    dense, experts = model_bytes["dense_per_token_bytes"], model_bytes["active_expert_bytes_per_token"]
    if not gpu:
        return bound_from_parts([Part("RAM", dense + experts, cpu)]).tok_s
    h = _hit_rate(row, num_layers)
    if h is None:
        return None

    def bound(c: float) -> float:
        return bound_from_parts([Part("VRAM", dense + (1 - c) * experts, gpu),
                                 Part("PCIe", max(0.0, 1 - h - c) * experts, h2d or cpu),
                                 Part("RAM", c * experts, cpu)], overlap=overlap).tok_s

    c = _cpu_share(row, h)
    return bound(c) if c is not None else max(bound(0.0), bound(1.0 - h))


def model_bytes(model: dict, row: dict) -> dict:
    """The byte counts of a row's engine: for a GGUF-only model (schema /3) llama.cpp reads every
    tensor as stored ("bytes_llamacpp") and lazymoe the non-expert ones at its compute dtype;
    otherwise (and in /1 and /2 files) both read the same bytes."""
    if row.get("engine") == "llamacpp" and model.get("bytes_llamacpp"):
        return model["bytes_llamacpp"]
    return model["bytes"]


def weights_format(document: dict, model: str | None) -> str | None:
    """The model's weights as the results record them: a GGUF entry's expert format (Q4_0,
    Q4_K+Q6_K), else None (a folder: the dtype column of the rows says it)."""
    weights = (document.get("models", {}).get(model) or {}).get("weights") or {}
    return weights.get("format")


def routing_name(row: dict) -> str:
    """The row's routing regime; results files before regimes said "uniform" for a random model's
    own routing, which was anything but uniform: shown as model-own."""
    name = row.get("routing") or "?"
    return "model-own" if name == "uniform" else name


def rows(document: dict) -> list[dict]:
    """Flat rows with the bound and the fraction of it reached, for tables and charts."""
    out = []
    on_gpu = bool((document.get("bandwidths") or {}).get("gpu_read_gbps"))
    for r in document["results"]:
        model = document["models"].get(r.get("model"), {})
        layers = (model.get("shape") or {}).get("num_layers")
        bound = (roofline_tok_s(r, model_bytes(model, r), document.get("bandwidths") or {},
                                num_layers=layers) if model else None)
        decode = r.get("decode_tok_s") if r.get("ok") else None
        cold = (r.get("cold") or {}) if r.get("ok") else {}
        out.append({
            "model": r.get("model"),
            "weights_format": (r.get("weights") or {}).get("format") or weights_format(document, r.get("model")),
            "routing": routing_name(r), "routing_params": r.get("routing_params"),
            "label": r.get("label"),
            "engine": r.get("engine"), "placement": r.get("placement"),
            "vram_budget_gb": r.get("vram_budget_gb"),
            "prefill_tok_s": r.get("prefill_tok_s") if r.get("ok") else None, "decode_tok_s": decode,
            "hit_rate": (_hit_rate(r, layers) if r.get("ok") and (r.get("engine") == "lazymoe" or on_gpu)
                         else None),
            "resident_fraction": r.get("resident_fraction"),
            "on_cpu": _counted_cpu_share(r) if r.get("ok") and r.get("engine") == "lazymoe" else None,
            "cold_first_token_s": cold.get("first_token_s"), "cold_decode_tok_s": cold.get("decode_tok_s"),
            "bound_tok_s": bound,
            "of_bound": decode / bound if decode and bound else None,
            "peak_vram_gb": _gb(r.get("peak_vram_bytes")) if r.get("ok") else None,
            "peak_rss_gb": _gb(r.get("peak_rss_bytes")) if r.get("ok") else None,
            "ok": r.get("ok", False), "error": r.get("error"),
        })
    return out


def _gb(nbytes: int | None) -> float | None:
    return None if nbytes is None else nbytes / GB  # None: not measured (llama-bench rows)


def _fmt(value, spec: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return format(value, spec)


def table(document: dict) -> str:
    """A fixed-width text table (also valid Markdown)."""
    head = ["model", "routing", "engine / placement", "VRAM budget GB", "prefill tok/s", "decode tok/s",
            "hit rate", "on CPU", "cold first token s", "cold tok/s", "bound tok/s", "of bound",
            "peak VRAM GB", "peak RSS GB"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows(document):
        model = f"{r['model']} [{r['weights_format']}]" if r["weights_format"] else str(r["model"])
        if not r["ok"]:
            lines.append(f"| {model} | {r['routing']} | {r['label']} | "
                         f"{_fmt(r['vram_budget_gb'], 'g')} | FAILED: {(r['error'] or '')[:80]} |")
            continue
        lines.append("| " + " | ".join([
            model, str(r["routing"]), str(r["label"]), _fmt(r["vram_budget_gb"], "g"),
            _fmt(r["prefill_tok_s"], ".1f"), _fmt(r["decode_tok_s"], ".2f"), _fmt(r["hit_rate"], ".2f"),
            _fmt(r["on_cpu"], ".0%"), _fmt(r["cold_first_token_s"], ".2f"), _fmt(r["cold_decode_tok_s"], ".2f"), _fmt(r["bound_tok_s"], ".1f"), _fmt(r["of_bound"], ".0%"), _fmt(r["peak_vram_gb"], ".2f"),
            _fmt(r["peak_rss_gb"], ".2f")]) + " |")
    return "\n".join(lines)


def speedups(document: dict, baseline_label: str = "llama.cpp --cpu-moe") -> list[dict]:
    """decode tok/s of every lazymoe row divided by the baseline's on the same model: the
    baseline row of the same routing if there is one, else its model-own row (llama.cpp cannot
    replay a trace, and with its experts placed per layer routing does not change its work)."""
    all_rows = [r for r in rows(document) if r["ok"] and r["decode_tok_s"]]
    base = {(r["model"], r["routing"]): r["decode_tok_s"] for r in all_rows if r["label"] == baseline_label}
    out = []
    for r in all_rows:
        found = base.get((r["model"], r["routing"])) or base.get((r["model"], "model-own"))
        if r["engine"] == "lazymoe" and found:
            out.append({**r, "speedup": r["decode_tok_s"] / found})
    return out


def figure(document: dict, model: str | None = None):
    """Decode tok/s against the VRAM budget, one line per engine/placement and routing, with each
    lazymoe line's roofline bound dashed. Engines without a budget sit at their measured peak VRAM."""
    import plotly.graph_objects as go

    fig = go.Figure()
    series: dict[tuple, list[dict]] = {}
    for r in rows(document):
        if r["ok"] and (model is None or r["model"] == model) and r["decode_tok_s"]:
            series.setdefault((r["model"], r["routing"], r["label"]), []).append(r)
    for (m, routing, label), points in series.items():
        points.sort(key=lambda p: p["vram_budget_gb"] or p["peak_vram_gb"] or 0)
        xs = [p["vram_budget_gb"] if p["vram_budget_gb"] is not None else p["peak_vram_gb"] for p in points]
        name = f"{label} ({routing})" if model else f"{m}: {label} ({routing})"
        if all(x is None for x in xs):  # no budget and no measured VRAM (llama-bench): a level line
            for p in points:
                fig.add_hline(y=p["decode_tok_s"], line_dash="dot", annotation_text=name)
            continue
        fig.add_scatter(x=xs, y=[p["decode_tok_s"] for p in points], mode="lines+markers", name=name)
        if points[0]["engine"] == "lazymoe" and any(p["bound_tok_s"] for p in points):
            fig.add_scatter(x=xs, y=[p["bound_tok_s"] for p in points], mode="lines",
                            line={"dash": "dash"}, name=f"bound: {name}", opacity=0.6)
    machine = document.get("machine", {})
    gpus = ", ".join(g["name"] for g in machine.get("gpus", [])) or "no GPU"
    fig.update_layout(
        title=f"Decode speed vs VRAM budget: {machine.get('cpu_model', '?')}; {gpus}",
        xaxis_title="VRAM budget, GB (engines without a budget: their peak VRAM)",
        yaxis_title="decode tokens/s (median)", legend_title="engine (routing)")
    return fig


def bar_figure(document: dict):
    """Decode tok/s of every row as bars, each row's bound as a marker: for CPU-only runs, where
    there is no VRAM budget to put on an axis."""
    import plotly.graph_objects as go

    ok = [r for r in rows(document) if r["ok"] and r["decode_tok_s"]]
    names = [f"{r['label']} ({r['routing']})" if len({x["routing"] for x in ok}) > 1 else r["label"] for r in ok]
    fig = go.Figure()
    fig.add_bar(x=names, y=[r["decode_tok_s"] for r in ok], name="measured (median)")
    if any(r["bound_tok_s"] for r in ok):
        fig.add_scatter(x=names, y=[r["bound_tok_s"] for r in ok], mode="markers", name="roofline bound",
                        marker={"symbol": "line-ew-open", "size": 40, "line": {"width": 3}})
    fig.update_layout(title="Decode speed per engine, and what the memory bandwidth allows",
                      yaxis_title="decode tokens/s", yaxis_type="log")
    return fig


def main(argv: list[str] | None = None) -> int:
    import sys

    argv = sys.argv[1:] if argv is None else argv
    for path in argv:
        document = load(path)
        print(f"{path}\n{document.get('command')}\n")
        print(table(document))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
