"""Measure a server the way its users feel it: time to first token, tokens/s, and many users at once.

    timing = stream_once(conn, "def fib(n):", max_tokens=32)
    timing.ttft_s, timing.decode_tok_s
    load = run_users(conn, n_users=16, prompt="def fib(n):", max_tokens=32)
    load.aggregate_tok_s, load.ttft_s(), load.ttft_s("p95")

`conn` is anything with `root_url`, `headers` and `model` (a `lazymoe.client.Connection`).
"""

from __future__ import annotations

import json
import math
import statistics
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any


def ttft_and_decode_rate(sent_s: float, arrivals_s: list[float]) -> tuple[float, float]:
    """(time to first token in s, decode speed in tokens/s) from one token's arrival time each.

        ttft_s       = arrivals_s[0] - sent_s
        decode_tok_s = (n - 1) / (arrivals_s[-1] - arrivals_s[0])

    The first token pays for the queue and the prefill; decode speed counts only the tokens
    after it, over the time after it (n - 1 gaps between n tokens).
    """
    if not arrivals_s:
        raise ValueError("no tokens arrived: nothing to time")
    ttft_s = arrivals_s[0] - sent_s
    span_s = arrivals_s[-1] - arrivals_s[0]
    decode_tok_s = (len(arrivals_s) - 1) / span_s if span_s > 0 else float("nan")
    return ttft_s, decode_tok_s


def queue_wait_bound_s(
    n_users: int, max_tokens: int, decode_tok_s: float, prefill_s: float = 0.0
) -> float:
    """How long the last of `n_users` identical requests waits for its first token, one at a time.

        wait_s = (n_users - 1) * (prefill_s + max_tokens / decode_tok_s) + prefill_s

    A server without batching runs requests one after another: the user at the back of the line
    waits for everyone in front of them to finish, then for their own prefill.
    """
    if n_users < 1 or max_tokens < 1 or decode_tok_s <= 0:
        raise ValueError("n_users and max_tokens must be >= 1 and decode_tok_s > 0")
    return (n_users - 1) * (prefill_s + max_tokens / decode_tok_s) + prefill_s


def carries_token(choice: dict[str, Any]) -> bool:
    """Whether a streamed /v1/completions choice brings a new token: it has text, or it has an
    empty text and is not the closing chunk (finish_reason set).

    lazymoe sends one chunk per token even when the token decodes to no text (half of a
    character, or most tokens of a random model), so the first token's arrival, and with it the
    time to first token, is seen whatever the text. Servers that send only chunks with text
    (llama-cpp-python's, one per piece) are counted as before; the closing chunk with empty text
    and a finish_reason is not a token.
    """
    text = choice.get("text")
    if text:
        return True
    return text == "" and choice.get("finish_reason") is None


@dataclass
class StreamTiming:
    sent_s: float  # time.perf_counter() when the request left
    arrivals_s: list[float]  # when each chunk carrying a token arrived (`carries_token`)
    done_s: float  # when [DONE] arrived
    n_tokens: int  # generated tokens, from the server's usage report
    text: str

    @property
    def ttft_s(self) -> float:
        return self.arrivals_s[0] - self.sent_s if self.arrivals_s else float("nan")

    @property
    def total_s(self) -> float:
        return self.done_s - self.sent_s

    @property
    def decode_tok_s(self) -> float:
        """Tokens after the first, per second after the first (chunks may hold several tokens)."""
        if len(self.arrivals_s) < 2 or self.n_tokens < 2:
            return float("nan")
        return (self.n_tokens - 1) / (self.arrivals_s[-1] - self.arrivals_s[0])


def stream_once(
    conn: Any,
    prompt: str | list[int],
    max_tokens: int = 32,
    *,
    client: Any = None,
    temperature: float = 0.0,
) -> StreamTiming:
    """One streaming /v1/completions request over raw HTTP, timed chunk by chunk (`prompt`:
    text, or token ids)."""
    import httpx

    own = client is None
    client = client or httpx.Client(base_url=conn.root_url, headers=conn.headers, timeout=300.0)
    body = {
        "model": conn.model,
        "prompt": prompt,
        "max_tokens": max_tokens,
        "temperature": temperature,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    arrivals_s, pieces, n_tokens = [], [], 0
    try:
        sent_s = time.perf_counter()
        with client.stream("POST", "/v1/completions", json=body, headers=conn.headers) as response:
            if response.status_code != 200:
                response.read()
                raise RuntimeError(f"HTTP {response.status_code}: {response.text}")
            for line in response.iter_lines():
                if not line.startswith("data: "):
                    continue
                data = line[len("data: ") :]
                if data == "[DONE]":
                    break
                event = json.loads(data)
                if "error" in event:
                    raise RuntimeError(f"the server failed mid-stream: {event['error']['message']}")
                if event.get("usage"):
                    n_tokens = event["usage"]["completion_tokens"]
                for choice in event.get("choices", []):
                    if carries_token(choice):
                        arrivals_s.append(time.perf_counter())
                        pieces.append(choice.get("text") or "")
        return StreamTiming(sent_s, arrivals_s, time.perf_counter(), n_tokens, "".join(pieces))
    finally:
        if own:
            client.close()


@dataclass
class LoadResult:
    n_users: int
    timings: list[StreamTiming]
    wall_s: float  # from the first request sent to the last [DONE]

    @property
    def aggregate_tok_s(self) -> float:
        """All users' tokens per second of wall time: what the server delivers in total."""
        return sum(t.n_tokens for t in self.timings) / self.wall_s

    def ttft_s(self, stat: str = "median") -> float:
        """Time to first token over the users: "median", "p95" (nearest rank: the smallest
        value at least 95% of users had) or "max"."""
        values = sorted(t.ttft_s for t in self.timings)
        if stat == "median":
            return statistics.median(values)
        if stat == "p95":
            return values[math.ceil(0.95 * len(values)) - 1]
        if stat == "max":
            return values[-1]
        raise ValueError(f"stat={stat!r}: use 'median', 'p95' or 'max'")

    def per_user_tok_s(self) -> float:
        """Median over users of tokens / (time from sending to [DONE]): what one user feels."""
        return statistics.median(t.n_tokens / t.total_s for t in self.timings)


def run_users(
    conn: Any,
    n_users: int,
    prompt: str | list[int],
    max_tokens: int = 32,
    *,
    prompts: Sequence[str | list[int]] | None = None,
) -> LoadResult:
    """`n_users` streaming requests sent at the same moment, each on its own thread.

    Every user sends `prompt`, or with `prompts` user i sends `prompts[i % len(prompts)]`.
    """
    prompts = prompts or [prompt]
    import httpx

    with (
        httpx.Client(
            base_url=conn.root_url,
            headers=conn.headers,
            timeout=300.0,
            limits=httpx.Limits(max_connections=n_users + 4),
        ) as client,
        ThreadPoolExecutor(max_workers=n_users) as pool,
    ):
        start_s = time.perf_counter()
        futures = [
            pool.submit(stream_once, conn, prompts[i % len(prompts)], max_tokens, client=client)
            for i in range(n_users)
        ]
        timings = [f.result() for f in futures]
    end_s = max(t.done_s for t in timings)
    return LoadResult(n_users, timings, end_s - start_s)
