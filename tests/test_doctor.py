"""`lazymoe doctor`: passes on a good install, fails loudly with the fix on a broken one, never crashes."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from lazymoe import doctor, hardware


def _run_cli(*args, env_updates=None):
    env = dict(os.environ, **(env_updates or {}))
    return subprocess.run([sys.executable, "-m", "lazymoe", "doctor", *args],
                          capture_output=True, text=True, env=env, timeout=120)


def test_passes_on_this_install():
    report = doctor.run_checks()
    assert report.ok, report.format()
    names = {c.name for c in report.checks}
    assert {"python", "torch", "jupyterlab", "ipywidgets", "cpu", "ram", "bundled model"} <= names


def test_missing_bundled_model_fails_with_the_fix(tmp_path):
    result = _run_cli(env_updates={"LAZYMOE_DATA": str(tmp_path)})
    assert result.returncode == 1
    assert "FAIL" in result.stdout and "bundled model" in result.stdout
    assert "make data" in result.stdout


@pytest.fixture
def model_present(monkeypatch):
    """Isolate a check from whether the bundled model has been built on this machine."""
    monkeypatch.setattr(doctor, "_bundled_model_check", lambda: doctor.Check("bundled model", doctor.OK))


def test_missing_required_package_is_a_failure_naming_the_fix(monkeypatch, model_present):
    monkeypatch.setattr(doctor, "REQUIRED", [("no_such_module_xyz", "no-such-dist", "testing")])
    report = doctor.run_checks()
    failed = report.failures()
    assert [c.name for c in failed] == ["no-such-dist"]
    assert "not installed" in failed[0].detail
    assert "make lab" in failed[0].fix
    assert not report.ok


def test_missing_optional_part_is_not_a_failure(monkeypatch, model_present):
    monkeypatch.setattr(doctor, "OPTIONAL_PARTS", [("no_such_module_xyz", "nope", "a lab", "llama")])
    report = doctor.run_checks()
    check = next(c for c in report.checks if c.name == "nope")
    assert check.status == doctor.OPTIONAL
    assert "pip install -e '.[llama]'" in check.fix
    assert report.ok


def test_no_gpu_and_no_nvml_never_crash(monkeypatch):
    pynvml = pytest.importorskip("pynvml")

    def broken():
        raise pynvml.NVMLError(pynvml.NVML_ERROR_LIBRARY_NOT_FOUND)

    monkeypatch.setattr(pynvml, "nvmlInit", broken)
    machine = hardware.probe()
    assert machine.gpus == []
    assert "no NVIDIA GPU" in machine.gpu_note
    report = doctor.run_checks()
    gpu = next(c for c in report.checks if c.name == "gpu")
    assert "runs on the CPU" in gpu.detail


def test_json_output_lists_every_check():
    result = _run_cli("--json")
    checks = json.loads(result.stdout)
    assert {"name", "status", "detail", "fix"} <= set(checks[0])
    assert result.returncode == (0 if all(c["status"] != "FAIL" for c in checks) else 1)


def test_gpu_bandwidth_and_link_from_nvml_numbers():
    gpu = hardware.GpuInfo(0, "test", 12 * 2**30, 0, memory_bus_width_bits=384,
                           memory_clock_mhz=9751, pcie_gen=4, pcie_width=16)
    # RTX 3090-like: 384-bit bus x 9751 MHz x 2 (DDR) / 8 bits = 936 GB/s
    assert gpu.memory_bandwidth_gbps == pytest.approx(936.1, abs=0.1)
    assert gpu.pcie_bandwidth_gbps == pytest.approx(31.5, abs=0.1)


def test_server_role_needs_the_serve_extra_not_jupyterlab(monkeypatch, model_present):
    monkeypatch.setattr(doctor, "COURSE", [("no_such_jupyter_xyz", "fake-jupyter", "notebooks")])
    monkeypatch.setattr(doctor, "OPTIONAL_PARTS", [("no_such_server_xyz", "fake-fastapi", "serving", "serve")])
    learner = doctor.run_checks("learner")
    server = doctor.run_checks("server")
    assert [c.name for c in learner.failures()] == ["fake-jupyter"]
    assert [c.name for c in server.failures()] == ["fake-fastapi"]
    assert "pip install -e '.[serve]'" in server.failures()[0].fix


def test_unknown_role_is_refused():
    with pytest.raises(ValueError, match="learner"):
        doctor.run_checks("gamer")


# GPUs by compute capability, and what PyTorch's wheels were built for (torch.cuda.get_arch_list())
CU128_ARCHS = ["sm_75", "sm_80", "sm_86", "sm_90", "sm_100", "sm_120", "compute_120"]
CU126_ARCHS = ["sm_50", "sm_60", "sm_70", "sm_75", "sm_80", "sm_86", "sm_90"]


@pytest.mark.parametrize("capability,archs,runs", [
    ((6, 1), CU128_ARCHS, False),  # a Pascal card (TITAN Xp, P40) and a CUDA 12.8 build
    ((7, 0), CU128_ARCHS, False),  # Volta
    ((6, 1), CU126_ARCHS, True),  # sm_60 runs on 6.1: same major, older minor
    ((8, 9), ["sm_80", "sm_90"], True),  # an Ada card on sm_80's binaries
    ((8, 0), ["sm_86", "sm_90"], False),  # a newer minor's binary does not run on an older one
    ((12, 1), ["sm_90", "compute_90"], True),  # PTX: compiled for the card when loaded
    ((9, 0), ["sm_90a"], True),
])
def test_arch_supported_follows_cudas_compatibility_rules(capability, archs, runs):
    assert doctor.arch_supported(capability, archs) is runs


@pytest.fixture
def pascal_gpu(monkeypatch):
    """torch.cuda as it looks with one Pascal card and a torch built for CUDA 12.8."""
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda i=0: "NVIDIA TITAN Xp")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda i=0: (6, 1))
    monkeypatch.setattr(torch.cuda, "get_arch_list", lambda: CU128_ARCHS)
    return torch


@pytest.mark.parametrize("server", [True, False])
def test_a_torch_without_the_gpus_arch_says_what_to_install(pascal_gpu, server):
    check = doctor._torch_arch_check(required=server)
    assert check.status == (doctor.FAIL if server else doctor.OPTIONAL)
    assert "TITAN Xp" in check.detail and "6.1 (sm_61)" in check.detail
    assert "sm_75" in check.detail  # what this torch was built for
    assert "--index-url https://download.pytorch.org/whl/cu126" in check.fix


def test_a_torch_with_the_gpus_arch_passes(pascal_gpu, monkeypatch):
    monkeypatch.setattr(pascal_gpu.cuda, "get_arch_list", lambda: CU126_ARCHS)
    check = doctor._torch_arch_check(required=True)
    assert check.status == doctor.OK and "sm_60" in check.detail


def test_no_cuda_means_no_arch_check(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert doctor._torch_arch_check(required=True) is None
