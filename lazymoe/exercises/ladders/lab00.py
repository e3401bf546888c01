"""Lab 00 (the doctor): reading the report, repairing a broken copy."""

from lazymoe.exercises.solutions import Exercise
from lazymoe.i18n import _

EXERCISES = [
    Exercise(
        key="lab00.reading",
        title=_("reading the doctor's report", lang="en"),
        check="lab00.check_reading(my_ram_total_gib, my_cpu_threads, my_nvidia_gpus)",
        hints=(
            _("Everything you need is printed in the report above: you only copy three numbers.", lang="en"),
            _("RAM: the 'ram' line, the number before 'GiB total'. Threads: the 'cpu' line, the number "
              "before 'threads'. GPUs: count the 'gpu' lines; 'no NVIDIA GPU found' means 0.", lang="en"),
            _("Write them as plain numbers: my_ram_total_gib = 15.5, my_cpu_threads = 8, "
              "my_nvidia_gpus = 0 (yours will differ).", lang="en"),
        ),
        solution="""\
from lazymoe import hardware

machine = hardware.probe()  # the same probe the doctor prints
my_ram_total_gib = round(machine.ram_total_bytes / 2**30, 1)  # GiB = 2**30 bytes
my_cpu_threads = machine.cpu_threads
my_nvidia_gpus = len(machine.gpus)
""",
        wrong="""\
from lazymoe import hardware

machine = hardware.probe()
my_ram_total_gib = round(machine.ram_total_bytes / 2**30, 1)
my_cpu_threads = machine.cpu_threads + 1  # misread the 'cpu' line
my_nvidia_gpus = len(machine.gpus)
""",
    ),
    Exercise(
        key="lab00.repair",
        title=_("repairing the setup", lang="en"),
        check="lab00.check_repaired()",
        hints=(
            _("The doctor said which file is missing. You have an intact copy of it in the real data "
              "folder: put it back where the doctor looks.", lang="en"),
            _("shutil.copy(source, destination) copies one file. The source is in "
              "real_data / 'models' / 'tiny-moe', the destination in scratch / 'models' / 'tiny-moe'.", lang="en"),
            _("One line: shutil.copy(real_data / ... / 'tokenizer.json', scratch / ... / 'tokenizer.json')", lang="en"),
        ),
        solution="""\
shutil.copy(real_data / "models" / "tiny-moe" / "tokenizer.json",
            scratch / "models" / "tiny-moe" / "tokenizer.json")
""",
    ),
]
