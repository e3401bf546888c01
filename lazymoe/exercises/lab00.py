"""Lab 00 checks: reading the doctor's report, and repairing a broken setup."""

from __future__ import annotations

from lazymoe import doctor, hardware
from lazymoe.exercises.base import CheckResult, failed, not_started, passed
from lazymoe.exercises.solutions import tracked
from lazymoe.i18n import _

GiB = 1024**3


@tracked("lab00.reading")
def check_reading(
    ram_total_gib: float | None, cpu_threads: int | None, nvidia_gpus: int | None
) -> CheckResult:
    """Compare what the learner read off the doctor's report with what the probe sees."""
    name = _("reading the doctor's report")
    if ram_total_gib is None and cpu_threads is None and nvidia_gpus is None:
        return not_started(name)
    blanks = (ram_total_gib, cpu_threads, nvidia_gpus)
    for value in blanks:  # "15.5" in quotes, or 15,5 with a comma (a tuple), is not a number
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
            return failed(
                name,
                _(
                    "{value!r} is not a number: write it as Python writes numbers, like 15.5 "
                    "(a dot for decimals, no quotes, no unit)."
                ).format(value=value),
            )
    machine = hardware.probe()
    problems = []
    true_ram_gib = machine.ram_total_bytes / GiB
    if ram_total_gib is None or abs(ram_total_gib - true_ram_gib) > 0.6:
        hint = ""
        if ram_total_gib and abs(ram_total_gib - machine.ram_total_bytes / 1e9) < 0.6:
            hint = _(" (that is the figure in GB = 10^9 bytes; the report says GiB = 2^30 bytes)")
        problems.append(
            _(
                "RAM: you wrote {ram_total_gib}, the 'ram' line says {true_ram_gib:.1f} GiB total{hint}"
            ).format(ram_total_gib=ram_total_gib, true_ram_gib=true_ram_gib, hint=hint)
        )
    if cpu_threads != machine.cpu_threads:
        problems.append(
            _(
                "CPU threads: you wrote {cpu_threads}; look at the 'cpu' line ('... threads')"
            ).format(cpu_threads=cpu_threads)
        )
    if nvidia_gpus != len(machine.gpus):
        problems.append(
            _(
                "NVIDIA GPUs: you wrote {nvidia_gpus}; count the 'gpu' lines (a line saying 'no NVIDIA GPU found' means 0)"
            ).format(nvidia_gpus=nvidia_gpus)
        )
    if problems:
        return failed(name, _("some numbers do not match the report."), *problems)
    return passed(name, _("you can read a machine's report."))


@tracked("lab00.repair")
def check_repaired() -> CheckResult:
    """After the repair, the doctor must pass on the (scratch) data folder it is pointed at."""
    name = _("repairing the setup")
    report = doctor.run_checks()
    failures = report.failures()
    if failures:
        return failed(
            name,
            _("the doctor still reports failures."),
            *(f"{c.name}: {c.detail} -> {c.fix}" for c in failures),
        )
    return passed(name, _("the doctor passes again."))
