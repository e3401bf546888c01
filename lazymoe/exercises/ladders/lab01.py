"""Lab 01 (bandwidth): the decode bound, and an MoE's bytes per token."""

from lazymoe.exercises.solutions import Exercise
from lazymoe.i18n import _

EXERCISES = [
    Exercise(
        key="lab01.decode_bound",
        title=_("the decode bound", lang="en"),
        check="lab01.check_decode_bound(decode_bound)",
        hints=(
            _("Each new token reads every weight once. How many times per second can the memory "
              "deliver that many bytes?", lang="en"),
            _("Bandwidth is in GB/s: multiply by 1e9 to get bytes per second, then divide by the bytes "
              "one token reads.", lang="en"),
            "return bandwidth_gbps * ___ / bytes_per_token",
        ),
        solution="""\
def decode_bound(bandwidth_gbps, bytes_per_token):
    return bandwidth_gbps * 1e9 / bytes_per_token  # (bytes/s) / (bytes/token) = tokens/s
""",
        wrong="""\
def decode_bound(bandwidth_gbps, bytes_per_token):
    return bytes_per_token / (bandwidth_gbps * 1e9)  # upside down: seconds per token
""",
    ),
    Exercise(
        key="lab01.moe_bytes",
        title=_("an MoE's bytes per token", lang="en"),
        check="lab01.check_moe_bytes_per_token(moe_bytes_per_token)",
        hints=(
            _("A token reads the weights outside the experts, plus only the experts it was routed to "
              "(top_k in each MoE layer), not all of them.", lang="en"),
            _("Count parameters first: outside + layers x top_k x per expert. Then turn parameters into "
              "bytes: x bits per weight / 8.", lang="en"),
            "params_read = params_outside + moe_layers * top_k * params_per_expert\n"
            "return params_read * ___ / 8",
        ),
        solution="""\
def moe_bytes_per_token(params_outside, params_per_expert, top_k, moe_layers, bits_per_weight):
    params_read = params_outside + moe_layers * top_k * params_per_expert
    return params_read * bits_per_weight / 8  # 8 bits per byte
""",
    ),
]
