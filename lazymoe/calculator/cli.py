"""`lazymoe calc`: the speed calculator on the command line.

    lazymoe calc --gpu "RTX 4060 Laptop" --ram-gb 32 --model Qwen3-30B-A3B --format Q4_K_M
    lazymoe calc --vram-gb 12 --vram-gbps 549 --pcie "3.0 x16" --gpus 2 --params-b 32 --bits 4.9
    lazymoe calc --model GPT-OSS-120B --gpu 3090 --strategy cpu_moe --n-cpu-moe 28 --json
    lazymoe calc --gpu 3090 --pcie "3.0 x8" --link-gbps 6.5 --model Llama-3.1-70B --format Q4_K_M
    lazymoe calc --gpu 3090 --model Qwen3-30B-A3B --format Q4_K_M --other-format Q8_0
    lazymoe calc --gpu "RTX 4060 Laptop" --model Qwen3-30B-A3B --measured   # lab01's figures
    lazymoe calc --list models          # catalog names (a unique part of a name is enough)
    lazymoe calc --cases                # the source documents' case studies: bound vs reported
"""

from __future__ import annotations

import argparse
import json

from lazymoe import calculator as calc
from lazymoe import catalog
from lazymoe.calculator.memory import gib
from lazymoe.catalog import CatalogError, HardwareSpec, ModelSpec
from lazymoe.i18n import _

DEFAULT_HOST = "Desktop, DDR5-5600 dual channel"
STRATEGY_OPTIONS = {  # CLI option -> (strategy keyword, strategies it applies to)
    "hit_rate": ("hit_rate", {"expert_cache"}),
    "cache_gb": ("cache_bytes", {"expert_cache"}),
    "gpu_layers": ("gpu_layers", {"layer_split"}),
    "n_cpu_moe": ("n_cpu_moe", {"cpu_moe"}),
    "resident_layers": ("resident_layers", {"layer_streaming"}),
    "mode": ("mode", {"multi_gpu"}),
}


def examples() -> str:
    """The docstring's examples for --help: the commands as they are, their comments translated."""
    comments = {  # the English after "# " in the docstring -> the learner's language
        "lab01's figures": _("lab01's figures"),
        "catalog names (a unique part of a name is enough)": _("catalog names (a unique part of a name is enough)"),
        "the source documents' case studies: bound vs reported": _(
            "the source documents' case studies: bound vs reported"),
    }
    text = __doc__.split("\n\n", 1)[1]
    for english, translated in comments.items():
        text = text.replace("# " + english, "# " + translated)
    return text


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = _("examples:") + "\n" + examples()
    hw = parser.add_argument_group(_("machine (catalog names, or explicit numbers)"))
    hw.add_argument("--gpu", help=_("GPU name from the catalog ('4090', 'RTX 3070 Ti Laptop')"))
    hw.add_argument("--gpus", type=int, default=1, help=_("number of such GPUs (default 1)"))
    hw.add_argument("--nvlink", action="store_true", help=_("GPUs talk over NVLink, not PCIe"))
    hw.add_argument("--vram-gb", type=float, help=_("explicit GPU: memory in GiB"))
    hw.add_argument("--vram-gbps", type=float,
                    help=_("GPU memory bandwidth in GB/s (explicit GPU; with --gpu: the measured rate)"))
    hw.add_argument("--pcie", help=_("host link the GPU runs at, e.g. '3.0 x8' (default: the GPU's "
                    "own; '4.0 x16' for an explicit GPU)"))
    hw.add_argument("--link-gbps", type=float,
                    help=_("effective host->GPU bandwidth in GB/s (default: the link's nominal rate)"))
    hw.add_argument("--host", help=_("CPU memory configuration or Apple chip (default '{host}')").format(host=DEFAULT_HOST))
    hw.add_argument("--ram-gbps", type=float, help=_("RAM bandwidth in GB/s (default: the host row's)"))
    hw.add_argument("--measured", action="store_true",
                    help=_("use this machine's bandwidths as lab01 measured them (explicit numbers win)"))
    hw.add_argument("--ram-gb", type=float, help=_("RAM in GiB (default 32; a Mac: its memory)"))
    hw.add_argument("--disk-gbps", type=float, default=calc.workload.DISK_GBPS,
                    help=_("disk sequential read in GB/s (default %(default)s)"))
    wl = parser.add_argument_group(_("workload"))
    wl.add_argument("--model", help=_("model name from the catalog"))
    wl.add_argument("--params-b", type=float, help=_("explicit dense model: billions of parameters"))
    wl.add_argument("--active-b", type=float, help=_("explicit MoE: billions read per token"))
    wl.add_argument("--format", help=_("weight format from the catalog, the experts' for an MoE "
                    "(default: as the model ships)"))
    wl.add_argument("--other-format", help=_("MoE: format of everything outside the experts "
                    "(default: the --format mix's own, or as shipped)"))
    wl.add_argument("--bits", type=float, help=_("explicit bits per weight (the experts', for an MoE)"))
    wl.add_argument("--other-bits", type=float, help=_("MoE: explicit bits per weight outside the experts"))
    wl.add_argument("--context", type=int, default=4096, help=_("context tokens (default 4096)"))
    wl.add_argument("--batch", type=int, default=1, help=_("sequences decoded together (default 1)"))
    wl.add_argument("--kv-bits", type=float, default=16, help=_("bits per KV value (default 16)"))
    st = parser.add_argument_group(_("strategy"))
    st.add_argument("--strategy", default="all",
                    help=_("all (default), auto, or one of: {strategies}").format(
                        strategies=", ".join(calc.STRATEGIES)))
    st.add_argument("--hit-rate", type=float, help=_("expert_cache: hit rate 0..1"))
    st.add_argument("--cache-gb", type=float, help=_("expert_cache: VRAM for cached experts, GiB"))
    st.add_argument("--gpu-layers", type=int, help=_("layer_split: layers on the GPU (-ngl)"))
    st.add_argument("--n-cpu-moe", type=int, help=_("cpu_moe: MoE layers whose experts stay on the CPU"))
    st.add_argument("--resident-layers", type=int, help=_("layer_streaming: layers kept in VRAM"))
    st.add_argument("--mode", choices=["layer", "tensor"], help=_("multi_gpu: how to split"))
    parser.add_argument("--json", action="store_true", help=_("print JSON instead of a table"))
    parser.add_argument("--list", choices=["hardware", "models", "formats"], help=_("list catalog names"))
    parser.add_argument("--cases", action="store_true", help=_("the case studies: bound vs reported"))


def build_machine(args: argparse.Namespace) -> calc.Machine:
    gpu, link = None, args.pcie
    if args.gpu:
        gpu = catalog.hardware(args.gpu)
    elif args.vram_gb or args.vram_gbps:
        if not (args.vram_gb and args.vram_gbps):
            raise calc.CalculatorError(_("an explicit GPU needs both --vram-gb and --vram-gbps"))
        gen, lanes = catalog.parse_link(args.pcie or "4.0 x16")
        gpu = HardwareSpec("your GPU", "gpu", args.vram_gbps, int(args.vram_gb * 2**30),
                           pcie_gen=gen, pcie_lanes=lanes, source="command line")
        link = None
    host = catalog.hardware(args.host or DEFAULT_HOST)
    ram_gb = args.ram_gb if args.ram_gb else (None if host.memory_bytes else 32)
    ram_bytes = int(ram_gb * 2**30) if ram_gb else host.memory_bytes
    figures: dict = {"disk_gbps": args.disk_gbps}
    if args.measured:
        measured = calc.load_measured()
        if measured is None:
            raise calc.CalculatorError(_("no measured bandwidths yet ({path}): run lab01's measurement "
                                         "cell first, or leave out --measured").format(path=calc.measured_path()))
        figures.update(measured.machine_kwargs())
        if gpu is None:
            figures.pop("effective_link_gbps", None)
            figures.pop("effective_vram_gbps", None)
        if args.disk_gbps != calc.workload.DISK_GBPS:
            figures["disk_gbps"] = args.disk_gbps
    explicit = {"effective_link_gbps": args.link_gbps, "effective_ram_gbps": args.ram_gbps,
                "effective_vram_gbps": args.vram_gbps if args.gpu else None}
    figures.update({k: v for k, v in explicit.items() if v is not None})
    return calc.Machine(host, ram_bytes, gpu, gpu_count=args.gpus, use_nvlink=args.nvlink,
                        link=link if gpu is not None else None, **figures)


def build_workload(args: argparse.Namespace) -> calc.Workload:
    if args.model:
        spec = catalog.model(args.model)
    elif args.params_b:
        active = args.active_b * 1e9 if args.active_b else None
        spec = ModelSpec(f"{args.params_b:g}B model", "moe" if active else "dense",
                         args.params_b * 1e9, params_active=active, source="command line")
    else:
        raise calc.CalculatorError(_("say which model: --model NAME, or --params-b N (and --active-b)"))
    if spec.name in catalog.all_models():
        bits, other, label = calc.workload.weight_bits(spec, args.format, args.other_format)
    else:
        fmt = catalog.weight_format(args.format or spec.native_format)
        bits, other, label = fmt.bits_per_weight, None, fmt.name
    if args.bits:
        bits, label = args.bits, _("{bits:g} bits").format(bits=args.bits)
    if args.other_bits:
        if not spec.has_expert_shapes:
            raise calc.CalculatorError(_("{model} has no separate experts: leave out --other-bits").format(
                model=spec.name))
        other, label = args.other_bits, _("{label}, rest {bits:g} bits").format(label=label, bits=args.other_bits)
    return calc.Workload(spec, bits, other, context_tokens=args.context, batch=args.batch,
                         kv_bits=args.kv_bits, format_label=label)


def _options(args: argparse.Namespace, strategy: str) -> dict:
    out = {}
    for cli, (kw, applies) in STRATEGY_OPTIONS.items():
        value = getattr(args, cli)
        if value is not None and strategy in applies:
            out[kw] = value * 2**30 if cli == "cache_gb" else value
    return out


def _row(p: calc.Plan) -> str:
    return (f"{p.strategy:<18}{p.tok_s:>10.3g}  {p.bottleneck:<16}{gib(p.memory.total('VRAM')):>10}"
            f"{gib(p.memory.total('RAM')):>10}{gib(p.memory.total('disk')):>10}  {p.verdict.label}")


def _list(kind: str) -> int:
    table = {"hardware": catalog.all_hardware, "models": catalog.all_models,
             "formats": catalog.all_formats}[kind]()
    for name, row in table.items():
        extra = getattr(row, "kind", "") or f"{row.bits_per_weight} bits"
        print(f"{name:<42}{extra}")
    return 0


def _cases(as_json: bool) -> int:
    rows = []
    for case in calc.case_studies():
        p = case.bound()
        rows.append({"case": case.key, "reported_tok_s": case.reported_tok_s, "bound_tok_s": p.tok_s,
                     "bottleneck": p.bottleneck, "strategy": p.strategy, "source": case.source})
    if as_json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{_('case'):<26}{_('reported'):>10}{_('bound'):>10}  {_('bottleneck')}")
    for r in rows:
        print(f"{r['case']:<26}{r['reported_tok_s']:>10.3g}{r['bound_tok_s']:>10.3g}  {r['bottleneck']}")
    print("\n" + _("reported: tokens/s as published; bound: the calculator's upper bound for the same setup"))
    return 0


def run(args: argparse.Namespace) -> int:
    try:
        if args.list:
            return _list(args.list)
        if args.cases:
            return _cases(args.json)
        machine, workload = build_machine(args), build_workload(args)
        if args.strategy == "all":
            results = calc.compare(machine, workload)
            for name in results:
                if isinstance(results[name], calc.Plan) and _options(args, name):
                    results[name] = calc.plan(machine, workload, name, **_options(args, name))
        else:
            p = calc.plan(machine, workload, args.strategy, **_options(args, args.strategy))
            results = {p.strategy: p}
    except (CatalogError, calc.CalculatorError) as exc:
        print(f"lazymoe calc: {exc}")
        return 2
    plans = {k: v for k, v in results.items() if isinstance(v, calc.Plan)}
    best = max((p for p in plans.values() if p.fits), key=lambda p: p.tok_s, default=None)
    if args.json:
        print(json.dumps({"machine": machine.describe(), "model": workload.model.name,
                          "bits_per_weight": workload.bits_per_weight,
                          "other_bits_per_weight": workload.other_bits_per_weight,
                          "formats": workload.describe_formats(),
                          "bandwidths_gbps": {"vram": machine.vram_gbps if machine.has_gpu else None,
                                              "ram": machine.ram_gbps,
                                              "link": machine.pcie_gbps if machine.gpu else None,
                                              "disk": machine.disk_gbps},
                          "best": best.strategy if best else None,
                          "plans": {k: v.as_dict() if isinstance(v, calc.Plan) else {"skipped": v}
                                    for k, v in results.items()}}, indent=2))
        return 0
    print(_("machine: {machine}").format(machine=machine.describe()))
    print(_("model:   {model} at {formats}, {weights} of weights, KV {kv} ({tokens} tokens x {batch})").format(
        model=workload.model.name, formats=workload.describe_formats(), weights=gib(workload.weight_bytes),
        kv=gib(workload.kv_cache_bytes), tokens=workload.context_tokens, batch=workload.batch))
    print(f"         {workload.describe_read()}\n")
    print(f"{_('strategy'):<18}{_('tok/s max'):>10}  {_('bottleneck'):<16}{'VRAM':>10}{'RAM':>10}"
          f"{_('disk'):>10}  {_('verdict')}")
    for name, result in results.items():
        print(_row(result) if isinstance(result, calc.Plan) else f"{name:<18}{'-':>10}  ({result})")
    if best is not None:
        print("\n" + _("best that fits: {plan}").format(plan=calc.describe(best)))
    return 0
