"""Lab 09 (benchmark): the bound of an expert-caching engine."""

from lazymoe.exercises.solutions import Exercise
from lazymoe.i18n import _

EXERCISES = [
    Exercise(
        key="lab09.bound",
        title=_("the bound of an expert-caching engine", lang="en"),
        check="check_bound(my_bound_tok_s)",
        hints=(
            _("A token costs two kinds of reading: everything it uses is read from VRAM, and the experts "
              "that missed the cache must first cross the link (PCIe). Add the two times; the speed is "
              "one over the sum.", lang="en"),
            _("VRAM time = (dense_bytes + expert_bytes) / (vram_gbps x 1e9). Link time = (1 - hit_rate) "
              "x expert_bytes / (link_gbps x 1e9). tokens/s = 1 / (VRAM time + link time).", lang="en"),
            "vram_s = (dense_bytes + expert_bytes) / (vram_gbps * 1e9)\n"
            "link_s = (1 - hit_rate) * expert_bytes / (link_gbps * 1e9)\nreturn 1 / (vram_s + link_s)",
        ),
        solution="""\
def my_bound_tok_s(dense_bytes, expert_bytes, hit_rate, vram_gbps, link_gbps):
    vram_s = (dense_bytes + expert_bytes) / (vram_gbps * 1e9)  # everything is read from VRAM
    link_s = (1 - hit_rate) * expert_bytes / (link_gbps * 1e9)  # misses cross the link first
    return 1 / (vram_s + link_s)
""",
        wrong="""\
def my_bound_tok_s(dense_bytes, expert_bytes, hit_rate, vram_gbps, link_gbps):
    vram_s = (dense_bytes + expert_bytes) / (vram_gbps * 1e9)
    link_s = hit_rate * expert_bytes / (link_gbps * 1e9)  # the hits do not cross the link
    return 1 / (vram_s + link_s)
""",
    ),
]
