"""Export banks to jupyterquiz's JSON (github.com/jmshea/jupyterquiz) for a static site.

    python -m lazymoe.quiz.export OUT_DIR [--lang ko]     # one NN_quiz.json per module

jupyterquiz types: "multiple_choice" (one right answer), "many_choice" (several), "numeric"
(a `range` answer [value - err, value + err], known mistakes as wrong `value`s, a default hint).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from lazymoe.quiz.loading import load_all_banks
from lazymoe.quiz.model import Bank, Question


def question_to_jupyterquiz(question: Question, lang: str = "en") -> dict:
    prompt = question.prompt.get(lang)
    if question.kind == "numeric":
        assert question.value is not None
        err = question.allowed_error
        solution = question.explanation.get(lang) if question.explanation else "Right."
        answers: list[dict] = [
            {"type": "range", "range": [question.value - err, question.value + err],
             "correct": True, "feedback": solution},
        ]
        answers += [{"type": "value", "value": m.value, "correct": False,
                     "feedback": m.explanation.get(lang)} for m in question.mistakes]
        default = question.hint.get(lang) if question.hint else "Not quite: try again."
        answers.append({"type": "default", "feedback": default})
        return {"question": f"{prompt} ({question.unit})", "type": "numeric", "answers": answers}
    kind = "multiple_choice" if question.kind == "single" else "many_choice"
    return {
        "question": prompt,
        "type": kind,
        "answers": [
            {"answer": c.text.get(lang), "correct": c.id in question.answers,
             "feedback": c.explanation.get(lang)}
            for c in question.choices
        ],
    }


def bank_to_jupyterquiz(bank: Bank, lang: str = "en") -> list[dict]:
    return [question_to_jupyterquiz(q, lang) for q in bank.questions]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--lang", choices=["en", "ko"], default="en")
    args = parser.parse_args(argv)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    for module, bank in load_all_banks().items():
        out = args.out_dir / f"{module}_quiz.json"
        out.write_text(json.dumps(bank_to_jupyterquiz(bank, args.lang), ensure_ascii=False, indent=1))
        print(f"wrote {out} ({len(bank.questions)} questions)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
