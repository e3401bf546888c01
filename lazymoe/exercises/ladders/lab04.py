"""Lab 04 (the shared server): time to first token and rate, and the queue."""

from lazymoe.exercises.solutions import Exercise
from lazymoe.i18n import _

EXERCISES = [
    Exercise(
        key="lab04.ttft",
        title=_("time to first token and tokens per second", lang="en"),
        check="lab04.check_ttft_and_rate(ttft_and_rate)",
        hints=(
            _("TTFT is the wait from sending to the first token. The rate counts the tokens after the "
              "first one, over the time they took.", lang="en"),
            _("ttft = first arrival - sent. Rate: (number of arrivals - 1) / (last arrival - first "
              "arrival): n tokens have n - 1 gaps between them.", lang="en"),
            "ttft_s = arrivals_s[0] - sent_s\n"
            "decode_tok_s = (len(arrivals_s) - 1) / (arrivals_s[-1] - arrivals_s[0])",
        ),
        solution="""\
def ttft_and_rate(sent_s, arrivals_s):
    ttft_s = arrivals_s[0] - sent_s
    decode_tok_s = (len(arrivals_s) - 1) / (arrivals_s[-1] - arrivals_s[0])  # n tokens, n - 1 gaps
    return ttft_s, decode_tok_s
""",
        wrong="""\
def ttft_and_rate(sent_s, arrivals_s):
    return arrivals_s[0] - sent_s, len(arrivals_s) / (arrivals_s[-1] - sent_s)  # counts the wait
""",
    ),
    Exercise(
        key="lab04.queue",
        title=_("waiting in the queue", lang="en"),
        check="lab04.check_queue_wait(queue_wait_s)",
        hints=(
            _("You are the last of n_users in line: everyone in front of you is served completely "
              "before your prompt is even read.", lang="en"),
            _("One request costs prefill_s + max_tokens / decode_tok_s. There are n_users - 1 of them "
              "in front; then your own prefill before your first token.", lang="en"),
            "per_request_s = prefill_s + max_tokens / decode_tok_s\n"
            "return (n_users - 1) * per_request_s + prefill_s",
        ),
        solution="""\
def queue_wait_s(n_users, max_tokens, decode_tok_s, prefill_s):
    per_request_s = prefill_s + max_tokens / decode_tok_s  # everyone in front costs this much
    return (n_users - 1) * per_request_s + prefill_s
""",
    ),
]
