"""Time to first token and tokens/s of a lazymoe server for 1, 4, 16 and 32 users at once.

    .venv/bin/python scripts/server_load.py            # the embedded server on the bundled model
    LAZYMOE_API_BASE=... LAZYMOE_API_KEY=... .venv/bin/python scripts/server_load.py   # a shared one

The same calls lab 04 makes (lazymoe.client.connect, lazymoe.server.loadtest), with 48 tokens a
request and one warm-up request first.
"""

from __future__ import annotations

from lazymoe import client
from lazymoe.server import loadtest

PROMPT = "def fibonacci(n):"
MAX_TOKENS = 48


def main() -> int:
    conn = client.connect()
    try:
        loadtest.stream_once(conn, PROMPT, max_tokens=MAX_TOKENS)  # warm-up
        one = loadtest.stream_once(conn, PROMPT, max_tokens=MAX_TOKENS)
        print(f"server {conn.base_url} ({conn.source}), model {conn.model}")
        print(f"1 user, one request: TTFT {one.ttft_s * 1e3:.1f} ms, decode {one.decode_tok_s:.1f} tok/s")
        for n in (1, 4, 16, 32):
            load = loadtest.run_users(conn, n, PROMPT, max_tokens=MAX_TOKENS)
            print(f"{n:>2} users: TTFT median {load.ttft_s() * 1e3:7.0f} ms, max "
                  f"{load.ttft_s('max') * 1e3:7.0f} ms; aggregate {load.aggregate_tok_s:6.1f} tok/s")
    finally:
        conn.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
