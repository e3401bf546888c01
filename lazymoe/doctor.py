"""`lazymoe doctor`: is this machine ready for the course, and if not, what to run.

Each check gives OK, FAIL (a required part is broken: the exit code is non-zero) or
OPTIONAL (a part some labs use is missing: those labs skip it and say so).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import shutil
import sys
from dataclasses import dataclass, field

from lazymoe import hardware, paths
from lazymoe.i18n import _

OK, FAIL, OPTIONAL, INFO = "OK", "FAIL", "OPTIONAL", "INFO"  # status codes (--json keeps these)
GiB = 1024**3
MIN_PYTHON = (3, 10)

# (import name, distribution name, what it is for). The purposes are marked for the catalog but kept in
# English here (lang="en"): they are translated where shown, so a language chosen later still applies.
REQUIRED = [
    ("torch", "torch", _("tensors and the models", lang="en")),
    ("numpy", "numpy", _("arrays", lang="en")),
    ("safetensors", "safetensors", _("reading model weights", lang="en")),
    ("transformers", "transformers", _("the reference model", lang="en")),
    ("tokenizers", "tokenizers", _("the tokenizer", lang="en")),
    ("gguf", "gguf", _("GGUF files for llama.cpp", lang="en")),
    ("yaml", "pyyaml", _("catalogs and quiz banks", lang="en")),
    ("tqdm", "tqdm", _("progress bars", lang="en")),
    ("psutil", "psutil", _("CPU and RAM readings", lang="en")),
]
COURSE = [
    ("jupyterlab", "jupyterlab", _("the course notebooks", lang="en")),
    ("ipywidgets", "ipywidgets", _("calculator and quiz widgets", lang="en")),
    ("plotly", "plotly", _("charts", lang="en")),
    ("ipykernel", "ipykernel", _("the notebook kernel", lang="en")),
]
# (import name, distribution name, what it is for, extra that installs it)
OPTIONAL_PARTS = [
    ("llama_cpp", "llama-cpp-python", _("lab09: the llama.cpp CPU-MoE comparison", lang="en"), "llama"),
    ("fastapi", "fastapi", _("lab04: the local API server", lang="en"), "serve"),
    ("uvicorn", "uvicorn", _("lab04: the local API server", lang="en"), "serve"),
    ("httpx", "httpx", _("lab04: raw HTTP calls", lang="en"), "serve"),
    ("openai", "openai", _("lab04: the OpenAI client", lang="en"), "serve"),
    ("accelerate", "accelerate", _("lab09: the naive offload baseline", lang="en"), "bench"),
    ("pynvml", "nvidia-ml-py", _("reading NVIDIA GPUs", lang="en"), ""),
]


@dataclass
class Check:
    name: str
    status: str
    detail: str = ""
    fix: str = ""


@dataclass
class DoctorReport:
    checks: list[Check] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(c.status != FAIL for c in self.checks)

    def failures(self) -> list[Check]:
        return [c for c in self.checks if c.status == FAIL]

    def format(self) -> str:
        width = max(len(c.name) for c in self.checks)
        words = {OK: _("OK"), FAIL: _("FAIL"), OPTIONAL: _("OPTIONAL"), INFO: _("INFO")}
        lines = [f"{words.get(c.status, c.status):<9}{c.name:<{width + 2}}{c.detail}" for c in self.checks]
        fixes = [f"  - {c.name}: {c.fix}" for c in self.checks if c.status == FAIL and c.fix]
        optional = [f"  - {c.name}: {c.fix}" for c in self.checks if c.status == OPTIONAL and c.fix]
        if fixes:
            lines += ["", _("To fix the failures:"), *fixes]
        if optional:
            lines += ["", _("Optional parts (some labs skip without them):"), *optional]
        lines += ["", _("All required checks passed.") if self.ok else _("Some required checks FAILED.")]
        return "\n".join(lines)


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _import_check(module: str, dist: str, purpose: str, missing_status: str, fix: str) -> Check:
    try:
        importlib.import_module(module)
    except Exception as exc:  # ImportError, or a broken binary raising something else
        installed = _version(dist)
        reason = (_("installed ({version}) but fails to import: {error}").format(version=installed, error=exc)
                  if installed else _("not installed"))
        return Check(dist, missing_status, _("{reason} - needed for {purpose}").format(
            reason=reason, purpose=_(purpose)), fix)
    return Check(dist, OK, f"{_version(dist) or '?'}  ({_(purpose)})")


# What each kind of machine must have, beyond REQUIRED. A learner's laptop runs the notebooks; the
# group's GPU server runs `lazymoe serve` (no JupyterLab); a benchmark machine runs `lazymoe bench`.
ROLES = {
    "learner": {"course"},
    "server": {"serve"},
    "bench": {"llama"},
}


def run_checks(role: str = "learner") -> DoctorReport:
    """Run every check for a machine of this role; never raises. Labs call this and print `report.format()`."""
    if role not in ROLES:
        raise ValueError(_("unknown role {role!r}: choose one of {roles}").format(role=role, roles=", ".join(ROLES)))
    needed = ROLES[role]
    report = DoctorReport()
    add = report.checks.append

    py_ok = sys.version_info[:2] >= MIN_PYTHON
    add(Check("python", OK if py_ok else FAIL, sys.version.split()[0],
              "" if py_ok else _("install Python 3.10 or newer, then run `make lab` again")))

    reinstall = _("run `make lab` (or `pip install -e '.[course]'` inside .venv)")
    for module, dist, purpose in REQUIRED:
        add(_import_check(module, dist, purpose, FAIL, reinstall))
    for module, dist, purpose in COURSE:
        status = FAIL if "course" in needed else OPTIONAL
        add(_import_check(module, dist, purpose, status, reinstall if status == FAIL else "pip install -e '.[course]'"))
    for module, dist, purpose, extra in OPTIONAL_PARTS:
        fix = f"pip install -e '.[{extra}]'" if extra else f"pip install {dist}"
        if module == "llama_cpp":
            fix += _(" (needs a C/C++ compiler and CMake; see README, Troubleshooting)")
        add(_import_check(module, dist, purpose, FAIL if extra in needed else OPTIONAL, fix))

    machine = hardware.probe()
    add(Check("cpu", INFO, _("{model}; {cores} cores, {threads} threads; {flags}").format(
        model=machine.cpu_model, cores=machine.cpu_cores_physical, threads=machine.cpu_threads,
        flags=" ".join(machine.isa_flags) or _("no SIMD flags read"))))
    add(Check("ram", INFO, _("{total_gib:.1f} GiB total, {available_gib:.1f} GiB available").format(
        total_gib=machine.ram_total_bytes / GiB, available_gib=machine.ram_available_bytes / GiB)))
    if machine.ram_total_bytes < 8 * GiB:
        report.checks[-1].status = OPTIONAL
        report.checks[-1].fix = _("under 8 GiB of RAM: close other programs before the labs")
    if machine.gpus:
        for gpu in machine.gpus:
            bw = gpu.memory_bandwidth_gbps
            link = f"PCIe {gpu.pcie_gen} x{gpu.pcie_width}" if gpu.pcie_gen else _("link unknown")
            add(Check(f"gpu{gpu.index}", INFO, _(
                "{name}, {vram_gib:.1f} GiB VRAM ({used_gib:.1f} in use), {bandwidth}, {link}, "
                "driver {driver}, CUDA {cuda}").format(
                name=gpu.name, vram_gib=gpu.vram_total_bytes / GiB, used_gib=gpu.vram_used_bytes / GiB,
                bandwidth=f"{bw:.0f} GB/s" if bw else _("bandwidth unknown"), link=link,
                driver=gpu.driver_version, cuda=gpu.cuda_version)))
        add(_torch_cuda_check())
        arch = _torch_arch_check("server" in needed)
        if arch is not None:
            add(arch)
    else:
        add(Check("gpu", INFO, _("{note}: the course runs on the CPU").format(note=machine.gpu_note or _("none"))))
    for accel in machine.other_accelerators:
        add(Check("accelerator", INFO, accel))

    add(_bundled_model_check())
    free = shutil.disk_usage(paths.REPO_ROOT).free
    add(Check("disk", OK if free > 2 * GiB else OPTIONAL, _("{free_gib:.1f} GiB free").format(free_gib=free / GiB),
              "" if free > 2 * GiB else _("free some disk space: the labs write a few hundred MB")))
    return report


def _torch_cuda_check() -> Check:
    try:
        import torch
    except Exception:
        return Check("torch.cuda", OPTIONAL, _("torch missing"))
    if torch.cuda.is_available():
        return Check("torch.cuda", OK, _("CUDA {cuda}, {count} device(s)").format(
            cuda=torch.version.cuda, count=torch.cuda.device_count()))
    return Check("torch.cuda", OPTIONAL,
                 _("a GPU is present but this torch ({version}) cannot use it").format(version=torch.__version__),
                 _("install a CUDA build of torch (README, 'CPU-only vs CUDA') to use the GPU"))


# PyTorch's CUDA 12.6 wheels still hold kernels for Pascal and Volta (sm_60, sm_70); its wheels
# for newer CUDA versions leave them out (the "CPU-only vs CUDA" section of the README).
CU126_INDEX = "https://download.pytorch.org/whl/cu126"


def arch_supported(capability: tuple[int, int], arch_list: list[str]) -> bool:
    """Can a torch built for `arch_list` (torch.cuda.get_arch_list()) run on a GPU of this
    compute `capability`? A binary for sm_XY runs on X.Y and later minors of the same major
    (sm_80 on an 8.6 card); PTX (compute_XY) is compiled at load for any X.Y or later."""
    for arch in arch_list:
        kind, _, number = arch.partition("_")
        digits = "".join(ch for ch in number if ch.isdigit())  # "90a" -> "90"
        if not digits:
            continue
        built = divmod(int(digits), 10)  # "120" -> (12, 0)
        if kind == "sm" and built[0] == capability[0] and built[1] <= capability[1]:
            return True
        if kind == "compute" and built <= capability:
            return True
    return False


def _torch_arch_check(required: bool) -> Check | None:
    """Is this torch built for each visible GPU's compute capability? None without CUDA.
    (A torch without the GPU's kernels sees the GPU, then fails at the first operation on it.)"""
    try:
        import torch

        if not torch.cuda.is_available():
            return None
        archs = torch.cuda.get_arch_list()
        gpus = [(i, torch.cuda.get_device_name(i), torch.cuda.get_device_capability(i))
                for i in range(torch.cuda.device_count())]
    except Exception as exc:  # a broken driver or build: _torch_cuda_check reports it
        detail = _("could not read the GPU's compute capability: {error}").format(error=exc)
        return Check("torch.cuda arch", OPTIONAL, detail)
    missing = [(i, name, cap) for i, name, cap in gpus if archs and not arch_supported(cap, archs)]
    if not missing:
        return Check("torch.cuda arch", OK, _("built for {archs}").format(archs=" ".join(archs)))
    i, name, (major, minor) = missing[0]
    detail = _("GPU {index} ({name}) has compute capability {major}.{minor} (sm_{major}{minor}), "
               "but this torch ({version}) was built for {archs}: it cannot run there").format(
        index=i, name=name, major=major, minor=minor, version=torch.__version__,
        archs=" ".join(archs))
    fix = _("install a PyTorch build with sm_{major}{minor}: for Pascal and Volta (6.x, 7.0), "
            "PyTorch's CUDA 12.6 wheels: `.venv/bin/pip install --force-reinstall torch "
            "--index-url {index_url}` (docs/instructor.md, section 2)").format(
        major=major, minor=minor, index_url=CU126_INDEX)
    return Check("torch.cuda arch", FAIL if required else OPTIONAL, detail, fix)


def _bundled_model_check() -> Check:
    model_dir = paths.bundled_model_dir()
    needed = ["config.json", "model.safetensors", "tokenizer.json"]
    missing = [name for name in needed if not (model_dir / name).is_file()]
    if missing:
        return Check("bundled model", FAIL, _("{folder} lacks {files}").format(folder=model_dir, files=", ".join(missing)),
                     _("run `make data` to rebuild it from its recipe"))
    size = sum(p.stat().st_size for p in model_dir.iterdir() if p.is_file())
    return Check("bundled model", OK, f"{model_dir} ({size / 1e6:.1f} MB)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help=_("print the checks as JSON"))
    parser.add_argument("--role", choices=sorted(ROLES), default="learner",
                        help=_("what this machine is for: learner (notebooks, the default), "
                               "server (`lazymoe serve`, no JupyterLab needed), bench (llama.cpp comparison)"))


def run(args: argparse.Namespace) -> int:
    report = run_checks(args.role)
    if args.json:
        import dataclasses
        import json

        print(json.dumps([dataclasses.asdict(c) for c in report.checks], indent=2))
    else:
        print(report.format())
    return 0 if report.ok else 1
