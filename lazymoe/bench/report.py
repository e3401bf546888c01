"""Read a results JSON: the roofline bound of each row, a text table, a plotly chart.

The bound of a row is the course calculator's (`lazymoe.calculator`): the decode speed if every
byte a token needs moved at the measured bandwidth of the memory or link it crosses, one after the
other (no overlap). With h the row's measured hit rate and E the routed experts' bytes per token:

    GPU fetch (lazymoe "gpu"):    t = (dense + E) / VRAM  +  (1 - h) E / pinned H2D
                                  (= calculator.expert_cache_bound: a missed expert crosses PCIe,
                                   then is read from VRAM like a hit)
    CPU compute ("cpu", llama.cpp --cpu-moe, where h = 0):
                                  t = (dense + h E) / VRAM  +  (1 - h) E / CPU memory
    auto:                         the faster of the two
    no GPU:                       t = (dense + E) / CPU memory

h is 1 when every expert is resident (llama.cpp all on GPU, the full transformers model). The
bandwidths are measured on the machine that ran the benchmark (`lazymoe.bench.bandwidth`).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from lazymoe.calculator import Part, bound_from_parts

GB = 1e9


def load(path: str | Path) -> dict:
    return json.loads(Path(path).read_text())


def _hit_rate(row: dict) -> float | None:
    if row.get("engine") == "llamacpp":
        return 0.0 if row["options"].get("cpu_moe") else 1.0
    if row.get("engine") == "hf":
        return 1.0 if row["options"].get("mode") == "full" else None
    if row.get("vram_budget_gb") is None:
        return 1.0  # lazymoe with every expert resident
    return row.get("hit_rate")


def roofline_tok_s(row: dict, model_bytes: dict, bandwidths: dict) -> float | None:
    """The bound above for one result row; None when it does not apply (accelerate offload)."""
    gpu, cpu, h2d = (bandwidths.get(k) for k in ("gpu_read_gbps", "cpu_read_gbps", "h2d_pinned_gbps"))
    if not cpu:
        return None
    dense, experts = model_bytes["dense_per_token_bytes"], model_bytes["active_expert_bytes_per_token"]
    if not gpu:
        return bound_from_parts([Part("RAM", dense + experts, cpu)]).tok_s
    h = _hit_rate(row)
    if h is None:
        return None
    fetch = bound_from_parts([Part("VRAM", dense + experts, gpu),
                              Part("PCIe", (1 - h) * experts, h2d or cpu)]).tok_s
    compute = bound_from_parts([Part("VRAM", dense + h * experts, gpu),
                                Part("RAM", (1 - h) * experts, cpu)]).tok_s
    placement = "cpu" if row.get("engine") == "llamacpp" else row.get("placement")
    return {"gpu": fetch, "cpu": compute}.get(placement, max(fetch, compute))


def rows(document: dict) -> list[dict]:
    """Flat rows with the bound and the fraction of it reached, for tables and charts."""
    out = []
    on_gpu = bool((document.get("bandwidths") or {}).get("gpu_read_gbps"))
    for r in document["results"]:
        model = document["models"].get(r.get("model"), {})
        bound = roofline_tok_s(r, model["bytes"], document.get("bandwidths") or {}) if model else None
        decode = r.get("decode_tok_s") if r.get("ok") else None
        out.append({
            "model": r.get("model"), "routing": r.get("routing"), "label": r.get("label"),
            "engine": r.get("engine"), "placement": r.get("placement"),
            "vram_budget_gb": r.get("vram_budget_gb"),
            "prefill_tok_s": r.get("prefill_tok_s") if r.get("ok") else None, "decode_tok_s": decode,
            "hit_rate": _hit_rate(r) if r.get("ok") and (r.get("engine") == "lazymoe" or on_gpu) else None,
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
            "hit rate", "bound tok/s", "of bound", "peak VRAM GB", "peak RSS GB"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows(document):
        if not r["ok"]:
            lines.append(f"| {r['model']} | {r['routing']} | {r['label']} | "
                         f"{_fmt(r['vram_budget_gb'], 'g')} | FAILED: {(r['error'] or '')[:80]} |")
            continue
        lines.append("| " + " | ".join([
            str(r["model"]), str(r["routing"]), str(r["label"]), _fmt(r["vram_budget_gb"], "g"),
            _fmt(r["prefill_tok_s"], ".1f"), _fmt(r["decode_tok_s"], ".2f"), _fmt(r["hit_rate"], ".2f"),
            _fmt(r["bound_tok_s"], ".1f"), _fmt(r["of_bound"], ".0%"), _fmt(r["peak_vram_gb"], ".2f"),
            _fmt(r["peak_rss_gb"], ".2f")]) + " |")
    return "\n".join(lines)


def speedups(document: dict, baseline_label: str = "llama.cpp --cpu-moe") -> list[dict]:
    """decode tok/s of every lazymoe row divided by the baseline's, same model and routing."""
    all_rows = [r for r in rows(document) if r["ok"] and r["decode_tok_s"]]
    base = {(r["model"], r["routing"]): r["decode_tok_s"] for r in all_rows if r["label"] == baseline_label}
    return [{**r, "speedup": r["decode_tok_s"] / base[(r["model"], r["routing"])]}
            for r in all_rows if r["engine"] == "lazymoe" and (r["model"], r["routing"]) in base]


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
