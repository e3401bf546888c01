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

OK, FAIL, OPTIONAL, INFO = "OK", "FAIL", "OPTIONAL", "INFO"
GiB = 1024**3
MIN_PYTHON = (3, 10)

# (import name, distribution name, what it is for)
REQUIRED = [
    ("torch", "torch", "tensors and the models"),
    ("numpy", "numpy", "arrays"),
    ("safetensors", "safetensors", "reading model weights"),
    ("transformers", "transformers", "the reference model"),
    ("tokenizers", "tokenizers", "the tokenizer"),
    ("gguf", "gguf", "GGUF files for llama.cpp"),
    ("yaml", "pyyaml", "catalogs and quiz banks"),
    ("tqdm", "tqdm", "progress bars"),
    ("psutil", "psutil", "CPU and RAM readings"),
]
COURSE = [
    ("jupyterlab", "jupyterlab", "the course notebooks"),
    ("ipywidgets", "ipywidgets", "calculator and quiz widgets"),
    ("plotly", "plotly", "charts"),
    ("ipykernel", "ipykernel", "the notebook kernel"),
]
# (import name, distribution name, what it is for, extra that installs it)
OPTIONAL_PARTS = [
    ("llama_cpp", "llama-cpp-python", "lab09: the llama.cpp CPU-MoE comparison", "llama"),
    ("fastapi", "fastapi", "lab04: the local API server", "serve"),
    ("uvicorn", "uvicorn", "lab04: the local API server", "serve"),
    ("httpx", "httpx", "lab04: raw HTTP calls", "serve"),
    ("openai", "openai", "lab04: the OpenAI client", "serve"),
    ("accelerate", "accelerate", "lab09: the naive offload baseline", "bench"),
    ("pynvml", "nvidia-ml-py", "reading NVIDIA GPUs", ""),
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
        lines = [f"{c.status:<9}{c.name:<{width + 2}}{c.detail}" for c in self.checks]
        fixes = [f"  - {c.name}: {c.fix}" for c in self.checks if c.status == FAIL and c.fix]
        optional = [f"  - {c.name}: {c.fix}" for c in self.checks if c.status == OPTIONAL and c.fix]
        if fixes:
            lines += ["", "To fix the failures:", *fixes]
        if optional:
            lines += ["", "Optional parts (some labs skip without them):", *optional]
        lines += ["", "All required checks passed." if self.ok else "Some required checks FAILED."]
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
        reason = f"installed ({installed}) but fails to import: {exc}" if installed else "not installed"
        return Check(dist, missing_status, f"{reason} - needed for {purpose}", fix)
    return Check(dist, OK, f"{_version(dist) or '?'}  ({purpose})")


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
        raise ValueError(f"unknown role {role!r}: choose one of {', '.join(ROLES)}")
    needed = ROLES[role]
    report = DoctorReport()
    add = report.checks.append

    py_ok = sys.version_info[:2] >= MIN_PYTHON
    add(Check("python", OK if py_ok else FAIL, sys.version.split()[0],
              "" if py_ok else "install Python 3.10 or newer, then run `make lab` again"))

    reinstall = "run `make lab` (or `pip install -e '.[course]'` inside .venv)"
    for module, dist, purpose in REQUIRED:
        add(_import_check(module, dist, purpose, FAIL, reinstall))
    for module, dist, purpose in COURSE:
        status = FAIL if "course" in needed else OPTIONAL
        add(_import_check(module, dist, purpose, status, reinstall if status == FAIL else "pip install -e '.[course]'"))
    for module, dist, purpose, extra in OPTIONAL_PARTS:
        fix = f"pip install -e '.[{extra}]'" if extra else f"pip install {dist}"
        if module == "llama_cpp":
            fix += " (needs a C/C++ compiler and CMake; see README, Troubleshooting)"
        add(_import_check(module, dist, purpose, FAIL if extra in needed else OPTIONAL, fix))

    machine = hardware.probe()
    add(Check("cpu", INFO, f"{machine.cpu_model}; {machine.cpu_cores_physical} cores, "
              f"{machine.cpu_threads} threads; {' '.join(machine.isa_flags) or 'no SIMD flags read'}"))
    add(Check("ram", INFO, f"{machine.ram_total_bytes / GiB:.1f} GiB total, "
              f"{machine.ram_available_bytes / GiB:.1f} GiB available"))
    if machine.ram_total_bytes < 8 * GiB:
        report.checks[-1].status = OPTIONAL
        report.checks[-1].fix = "under 8 GiB of RAM: close other programs before the labs"
    if machine.gpus:
        for gpu in machine.gpus:
            bw = gpu.memory_bandwidth_gbps
            link = f"PCIe {gpu.pcie_gen} x{gpu.pcie_width}" if gpu.pcie_gen else "link unknown"
            add(Check(f"gpu{gpu.index}", INFO,
                      f"{gpu.name}, {gpu.vram_total_bytes / GiB:.1f} GiB VRAM "
                      f"({gpu.vram_used_bytes / GiB:.1f} in use), "
                      f"{f'{bw:.0f} GB/s' if bw else 'bandwidth unknown'}, {link}, "
                      f"driver {gpu.driver_version}, CUDA {gpu.cuda_version}"))
        add(_torch_cuda_check())
    else:
        add(Check("gpu", INFO, f"{machine.gpu_note or 'none'}: the course runs on the CPU"))
    for accel in machine.other_accelerators:
        add(Check("accelerator", INFO, accel))

    add(_bundled_model_check())
    free = shutil.disk_usage(paths.REPO_ROOT).free
    add(Check("disk", OK if free > 2 * GiB else OPTIONAL, f"{free / GiB:.1f} GiB free",
              "" if free > 2 * GiB else "free some disk space: the labs write a few hundred MB"))
    return report


def _torch_cuda_check() -> Check:
    try:
        import torch
    except Exception:
        return Check("torch.cuda", OPTIONAL, "torch missing")
    if torch.cuda.is_available():
        return Check("torch.cuda", OK, f"CUDA {torch.version.cuda}, {torch.cuda.device_count()} device(s)")
    return Check("torch.cuda", OPTIONAL, f"a GPU is present but this torch ({torch.__version__}) cannot use it",
                 "install a CUDA build of torch (README, 'CPU-only vs CUDA') to use the GPU")


def _bundled_model_check() -> Check:
    model_dir = paths.bundled_model_dir()
    needed = ["config.json", "model.safetensors", "tokenizer.json"]
    missing = [name for name in needed if not (model_dir / name).is_file()]
    if missing:
        return Check("bundled model", FAIL, f"{model_dir} lacks {', '.join(missing)}",
                     "run `make data` to rebuild it from its recipe")
    size = sum(p.stat().st_size for p in model_dir.iterdir() if p.is_file())
    return Check("bundled model", OK, f"{model_dir} ({size / 1e6:.1f} MB)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print the checks as JSON")
    parser.add_argument("--role", choices=sorted(ROLES), default="learner",
                        help="what this machine is for: learner (notebooks, the default), "
                             "server (`lazymoe serve`, no JupyterLab needed), bench (llama.cpp comparison)")


def run(args: argparse.Namespace) -> int:
    report = run_checks(args.role)
    if args.json:
        import dataclasses
        import json

        print(json.dumps([dataclasses.asdict(c) for c in report.checks], indent=2))
    else:
        print(report.format())
    return 0 if report.ok else 1
