"""`lazymoe run`: generate text with the expert-caching engine, with a live line of numbers.

    lazymoe run "def fibonacci(n):" --vram-budget 64MiB --max-new-tokens 64
    lazymoe run Qwen3-30B-A3B-Q4_K_M.gguf "def fibonacci(n):"    # a GGUF file (or a model folder) first
    lazymoe run --model path/to/Qwen3-30B-A3B --vram-budget 6GiB --ram-budget 24GiB --placement auto
    lazymoe run --help                  # every engine option (the same in `lazymoe serve` and `lazymoe bench`)

The text goes to stdout as it is made; the live line (tok/s, hit rate, bytes moved, VRAM) to
stderr, so `lazymoe run ... > out.txt` keeps only the text.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path

from lazymoe.engine.options import ModelPathError, add_engine_arguments, model_and_prompt
from lazymoe.i18n import _

DEFAULT_PROMPT = "def "  # the bundled model writes Python


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "words", nargs="*", metavar="[MODEL] PROMPT",
        help=_("the prompt text (default: 'def '); before it, if you like, the model instead of "
             "--model: a .gguf file or a model folder (lazymoe run model.gguf \"def fib(n):\")"))
    add_engine_arguments(parser.add_argument_group(_("engine (lazymoe.engine.EngineConfig)")))
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--temperature", type=float, default=0.0, help=_("0 is greedy"))
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--top-k", type=int, default=0)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--stats-json", default=None, help=_("write the final statistics here"))
    parser.add_argument("--quiet", action="store_true", help=_("no live line, no summary"))


def run(args: argparse.Namespace) -> int:
    from lazymoe.engine import Engine, EngineConfig, GenerationConfig
    from lazymoe.engine.errors import EngineError
    from lazymoe.engine.storage.store import ExpertStoreError

    try:
        model_path, args.prompt = model_and_prompt(args.words, args.model_path, DEFAULT_PROMPT)
    except ModelPathError as exc:
        print(f"lazymoe run: {exc}", file=sys.stderr)
        return 2
    try:
        engine = Engine(EngineConfig.from_args(args, model_path=model_path))
        gen = GenerationConfig(
            max_new_tokens=args.max_new_tokens, temperature=args.temperature,
            top_p=args.top_p, top_k=args.top_k, seed=args.seed,
        )  # fmt: skip
    except (EngineError, ExpertStoreError, ValueError, TypeError, FileNotFoundError, RuntimeError) as exc:
        print(f"lazymoe run: {exc}", file=sys.stderr)
        return 1
    if not args.quiet:
        print(engine.describe(), file=sys.stderr)
    prompt_ids = engine.tokenizer.encode(args.prompt)
    live = LiveLine(enabled=not args.quiet and sys.stderr.isatty())
    live.write_text(args.prompt)
    new: list[int] = []
    shown = ""
    for token in engine.stream(prompt_ids, gen):
        new.append(token)
        text = engine.tokenizer.decode(new)
        if not text.endswith("\ufffd"):  # wait for a multi-byte character to complete
            live.write_text(text[len(shown):])
            shown = text
        live.show(lambda: engine.stats().line())
    live.write_text("\n")
    stats = engine.stats()
    if not args.quiet:
        print(stats.line(), file=sys.stderr)
        print(
            _("{tokens} tokens | prefill {prefill_tok_s:.1f} tok/s | prefetch accuracy {accuracy:.1%}").format(
                tokens=stats.tokens, prefill_tok_s=stats.prefill_tok_s, accuracy=stats.prefetch_accuracy),
            file=sys.stderr,
        )
    if args.stats_json:
        Path(args.stats_json).write_text(json.dumps(stats.as_dict(), indent=2, default=str))
    return 0


class LiveLine:
    """One status line on stderr, redrawn in place, that never overwrites the generated text.

    When text and status share a terminal, the status sits on the row below the text and is
    erased (cursor back to where the text stopped) before more text is written; when stdout goes
    to a file, the status line simply updates in place.
    """

    def __init__(self, enabled: bool, every_s: float = 0.25) -> None:
        self.enabled = enabled
        self.shared = sys.stdout.isatty()  # text and status on the same screen
        self.every_s = every_s
        self._last = 0.0
        self._drawn = False
        self._column = 0  # where the text's last line ends

    def write_text(self, piece: str) -> None:
        if not piece:
            return
        self._erase()
        sys.stdout.write(piece)
        sys.stdout.flush()
        tail = piece.rsplit("\n", 1)
        self._column = len(tail[-1]) + (self._column if len(tail) == 1 else 0)

    def show(self, line: Callable[[], str]) -> None:
        now = time.perf_counter()
        if not self.enabled or now - self._last < self.every_s:
            return
        width = shutil.get_terminal_size().columns
        if self.shared and self._column and self._column % width == 0:
            return  # the cursor waits to wrap: a line below would land one row too far
        self._erase()
        sys.stderr.write(("\n" if self.shared else "") + line())
        sys.stderr.flush()
        self._drawn, self._last = True, now

    def _erase(self) -> None:
        if not self._drawn:
            return
        sys.stderr.write("\r\x1b[2K")
        if self.shared:  # back up to the end of the text
            width = shutil.get_terminal_size().columns
            column = self._column % width
            sys.stderr.write("\x1b[1A\r" + (f"\x1b[{column}C" if column else ""))
        sys.stderr.flush()
        self._drawn = False
