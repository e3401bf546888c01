"""Validate the quiz banks: `python -m lazymoe.quiz [FOLDER]` (default: the shipped banks).

Prints one line per bank, or the first problem found (file, question, what is wrong); exit 1 then.
"""

from __future__ import annotations

import sys
from collections import Counter

from lazymoe.quiz.errors import QuizError
from lazymoe.quiz.loading import bank_dir, load_all_banks


def main(argv: list[str]) -> int:
    folder = argv[0] if argv else bank_dir()
    try:
        banks = load_all_banks(folder)
    except QuizError as exc:
        print(f"INVALID {exc}")
        return 1
    if not banks:
        print(f"no banks (NN_name.yaml) in {folder}")
        return 1
    for module, bank in banks.items():
        kinds = Counter(q.kind for q in bank.questions)
        translated = sum(q.has_korean() for q in bank.questions)
        print(f"OK {module} {bank.title.en}: {len(bank.questions)} questions "
              f"({', '.join(f'{n} {k}' for k, n in sorted(kinds.items()))}; {translated} with ko)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
