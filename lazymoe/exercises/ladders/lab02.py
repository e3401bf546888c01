"""Lab 02 (prefill and decode): the KV cache's size, and fitting the roofline."""

from lazymoe.exercises.solutions import Exercise
from lazymoe.i18n import _

EXERCISES = [
    Exercise(
        key="lab02.kv_cache",
        title=_("the KV cache's size", lang="en"),
        check="check_kv_cache_bytes(kv_cache_bytes)",
        hints=(
            _("For every token, every layer keeps two vectors per KV head: a key and a value.", lang="en"),
            _("Multiply everything together: 2 (K and V) x layers x KV heads x head_dim x tokens x "
              "bytes per number.", lang="en"),
            "return 2 * num_layers * ___ * ___ * n_tokens * bytes_per_value",
        ),
        solution="""\
def kv_cache_bytes(num_layers, num_kv_heads, head_dim, n_tokens, bytes_per_value):
    \"\"\"Bytes of K and V for n_tokens tokens.\"\"\"
    return 2 * num_layers * num_kv_heads * head_dim * n_tokens * bytes_per_value
""",
        wrong="""\
def kv_cache_bytes(num_layers, num_kv_heads, head_dim, n_tokens, bytes_per_value):
    return num_layers * num_kv_heads * head_dim * n_tokens * bytes_per_value  # forgot V
""",
    ),
    Exercise(
        key="lab02.fit",
        title=_("fitting the roofline", lang="en"),
        check="check_fit_roofline(fit_roofline)",
        hints=(
            _("Time per token = bytes / bandwidth + a fixed cost. That is a straight line: seconds = "
              "slope x bytes + intercept. The slope is 1 / bandwidth, the intercept the fixed cost.", lang="en"),
            _("np.polyfit(x, y, 1) fits a straight line and returns (slope, intercept). x = bytes per "
              "token, y = seconds per token. Bandwidth in bytes/s is 1 / slope; divide by 1e9 for GB/s.", lang="en"),
            "slope, intercept = np.polyfit(x, y, 1); return (1 / slope / 1e9, intercept)",
        ),
        blanks="""\
def fit_roofline(bytes_per_token, seconds_per_token):
    \"\"\"-> (bandwidth_gbps, overhead_s)\"\"\"
    x = np.asarray(bytes_per_token, dtype=float)  # bytes
    y = np.asarray(seconds_per_token, dtype=float)  # seconds
    slope, intercept = np.polyfit(x, y, ___)  # a straight line has degree 1
    bandwidth_bytes_per_s = 1 / ___  # the slope is seconds per byte
    return bandwidth_bytes_per_s / ___, intercept  # GB/s: 1e9 bytes per second
""",
        solution="""\
def fit_roofline(bytes_per_token, seconds_per_token):
    \"\"\"-> (bandwidth_gbps, overhead_s)\"\"\"
    x = np.asarray(bytes_per_token, dtype=float)  # bytes
    y = np.asarray(seconds_per_token, dtype=float)  # seconds
    slope, intercept = np.polyfit(x, y, 1)  # seconds = slope * bytes + intercept
    return 1 / slope / 1e9, intercept
""",
        wrong="""\
def fit_roofline(bytes_per_token, seconds_per_token):
    slope, intercept = np.polyfit(np.asarray(bytes_per_token, float), np.asarray(seconds_per_token, float), 1)
    return slope, intercept  # the slope is seconds per byte, not GB/s
""",
    ),
]
