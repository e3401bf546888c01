"""Start a member's Jupyter server under memory and CPU limits: the local spawner's enforcement.

    python -m lazymoe.hub.limit --mem-bytes 4294967296 --cpus 2 -- jupyterhub-singleuser --allow-root

sets RLIMIT_AS (the most address space a process may map) to `--mem-bytes`, pins the process to
`--cpus` of the machine's cores (which ones follows from the member's name, JUPYTERHUB_USER, so
members spread over the cores), then replaces itself with the command. Everything the server starts inherits the limit, so a member's notebook that
asks for more gets a MemoryError (or a failed allocation) instead of pushing the machine into
swap, or making Linux's out-of-memory killer stop someone else's process. It is per process,
not per member: the Jupyter server and each kernel may each map that much. A cgroup limit for the member as a whole
needs the systemd spawner (`lazymoe hub --spawner systemd`, docs/instructor.md, section 9).
"""

from __future__ import annotations

import argparse
import math
import os
import re
import resource
import zlib

UNITS = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}  # JupyterHub's mem_limit units


def parse_bytes(text: str) -> int:
    """'4G' -> 4294967296 (K, M, G, T are powers of 1024, as in JupyterHub's mem_limit)."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)B?\s*", text.upper())
    if match is None:
        raise ValueError(f"memory limit {text!r}: write a number with K, M, G or T, e.g. 4G")
    return int(float(match.group(1)) * UNITS[match.group(2)])


def apply(mem_bytes: int) -> None:
    """Limit this process (and what it starts) to `mem_bytes` of address space."""
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    if hard != resource.RLIM_INFINITY:
        mem_bytes = min(mem_bytes, hard)  # a process may lower its limit, never raise it
    resource.setrlimit(resource.RLIMIT_AS, (mem_bytes, mem_bytes))


def pin_cpus(n_cpus: float, member: str | None = None) -> list[int]:
    """Let this process (and what it starts) run on `n_cpus` cores only (rounded up, at most
    the cores it may use now); `member`'s name picks where the run of cores starts, so two
    members are likely to get different cores. Returns the cores chosen."""
    allowed = sorted(os.sched_getaffinity(0))
    n = max(1, min(math.ceil(n_cpus), len(allowed)))
    start = zlib.crc32(member.encode()) % len(allowed) if member else 0
    chosen = sorted(allowed[(start + i) % len(allowed)] for i in range(n))
    os.sched_setaffinity(0, chosen)
    return chosen


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m lazymoe.hub.limit",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--mem-bytes", type=int, required=True, help="address space limit (bytes)")
    parser.add_argument("--cpus", type=float, default=None,
                        help="CPU cores the server and its kernels may use (default: all)")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- then the command to run")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no command to run: give it after --")
    if args.cpus is not None and not args.cpus > 0:
        parser.error(f"--cpus {args.cpus}: give a number of cores above 0, e.g. 2")
    apply(args.mem_bytes)
    if args.cpus is not None:
        pin_cpus(args.cpus, os.environ.get("JUPYTERHUB_USER"))
    os.execvp(command[0], command)


if __name__ == "__main__":
    main()
