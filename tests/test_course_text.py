"""The course's words, as a learner meets them: sources named by what they are (never an internal
"seed 002"), quiz questions that make a learner choose among at least three answers, each lab's
"The Python you need" box before its first exercise, and policy starters that show every method."""

from __future__ import annotations

import re
from pathlib import Path

import nbformat
import pytest

from lazymoe import nbtools, quiz
from lazymoe.quiz.loading import bank_files, load_bank_file
from lazymoe.quiz.model import Bank

REPO = Path(__file__).resolve().parents[1]
# English notebooks and the Korean ones built from them, the instructor's dashboard.
NOTEBOOKS = nbtools.notebooks(
    REPO / "course",
    REPO / "labs",
    REPO / "course" / "ko",
    REPO / "labs" / "ko",
    REPO / "instructor",
)
QUIZ_FILES = [*bank_files(REPO / "data" / "quizzes"), REPO / "data" / "quizzes" / "README.md"]
LABS = nbtools.notebooks(REPO / "labs")
SEED_CODE = re.compile(r"\bseed[ _-]?0\d\d\b", re.IGNORECASE)  # "seed 002", "Seed-014"
MIN_SINGLE_CHOICES = 3  # two choices is a coin toss
POLICY_HOOKS = ("__init__", "on_hit", "on_insert", "on_evict", "victim")


def ids(paths: list[Path]) -> list[str]:
    return [p.relative_to(REPO).as_posix() for p in paths]


def seed_codes(text: str) -> list[str]:
    """Each internal source code in `text`, with a little of the line around it."""
    return [
        text[max(0, m.start() - 30) : m.end() + 30].replace("\n", " ")
        for m in SEED_CODE.finditer(text)
    ]


def notebook_seed_codes(path: Path) -> list[str]:
    nb = nbformat.read(path, as_version=4)
    return [
        f"cell {i}: ...{found}..."
        for i, cell in enumerate(nb.cells)
        for found in seed_codes(cell.source)
    ]


def coin_tosses(bank: Bank) -> list[str]:
    """Single-choice questions with fewer than MIN_SINGLE_CHOICES choices."""
    return [
        f"{bank.module}/{q.id} has {len(q.choices)} choices"
        for q in bank.questions
        if q.kind == "single" and len(q.choices) < MIN_SINGLE_CHOICES
    ]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=ids(NOTEBOOKS))
def test_no_notebook_cites_a_seed_code(path):
    found = notebook_seed_codes(path)
    assert not found, (
        f"{path.name} cites an internal source code; name the source by what it is "
        f"(a paper's or blog post's title, a datasheet): {found}"
    )


@pytest.mark.parametrize("path", QUIZ_FILES, ids=ids(QUIZ_FILES))
def test_no_quiz_file_cites_a_seed_code(path):
    found = seed_codes(path.read_text(encoding="utf-8"))
    assert not found, f"{path.name}: name the source by what it is, not {found}"


def test_the_seed_scan_sees_a_code_in_any_cell_and_spares_a_random_seed(tmp_path):
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_markdown_cell("Decode is memory-bound (seed 002)."),
        nbformat.v4.new_code_cell("gen = GenerationConfig(seed=0)  # Seed_014 measured this"),
        nbformat.v4.new_code_cell("torch.manual_seed(0)\nrng = np.random.default_rng(seed=123)"),
    ]
    path = tmp_path / "planted.ipynb"
    nbformat.write(nb, path)
    found = notebook_seed_codes(path)
    assert [f.split(":")[0] for f in found] == ["cell 0", "cell 1"]
    assert "seed 002" in found[0] and "Seed_014" in found[1]


def test_every_single_choice_question_offers_at_least_three_choices():
    tosses = [
        t
        for bank in quiz.load_all_banks(REPO / "data" / "quizzes").values()
        for t in coin_tosses(bank)
    ]
    assert not tosses, f"add a plausible wrong choice (with its explanation): {tosses}"


def test_the_choice_rule_sees_a_two_choice_question_but_not_a_multiple_one(tmp_path):
    choice = "      - text: {t}\n        explanation: why {t}.\n"
    path = tmp_path / "09_planted.yaml"
    path.write_text(
        'module: "09"\ntitle: Planted\nquestions:\n'
        "  - id: q1\n    kind: single\n    prompt: Which way?\n    answer: a\n    choices:\n"
        + choice.format(t="left")
        + choice.format(t="right")
        + "  - id: q2\n    kind: multiple\n    prompt: Which?\n    answer: [a, b]\n    choices:\n"
        + choice.format(t="this")
        + choice.format(t="that"),
        encoding="utf-8",
    )
    assert coin_tosses(load_bank_file(path)) == ["09/q1 has 2 choices"]


@pytest.mark.parametrize("path", LABS, ids=ids(LABS))
def test_each_lab_shows_the_python_it_needs_before_its_first_exercise(path):
    cells = nbformat.read(path, as_version=4).cells
    first_box = next(
        (
            i
            for i, c in enumerate(cells)
            if c.cell_type == "markdown" and "The Python you need" in c.source
        ),
        None,
    )
    first_exercise = next(
        i
        for i, c in enumerate(cells)
        if c.cell_type == "code" and "use_solution_if_testing(" in c.source
    )
    assert first_box is not None, f"{path.name} has no 'The Python you need' box"
    assert first_box < first_exercise, (
        f"{path.name}: the box (cell {first_box}) comes after the first exercise (cell {first_exercise})"
    )
    assert cells[first_box + 1].cell_type == "code", (
        "the box has a runnable cell right after its text"
    )


@pytest.mark.parametrize("path", LABS, ids=ids(LABS))
def test_a_policy_starter_shows_every_method_the_cache_calls(path):
    starters = [
        c.source
        for c in nbformat.read(path, as_version=4).cells
        if c.cell_type == "code" and re.search(r"^class My\w*\(EvictionPolicy\)", c.source, re.M)
    ]
    for source in starters:
        missing = [hook for hook in POLICY_HOOKS if f"def {hook}(" not in source]
        assert not missing, f"{path.name}: the starter {source.split(':')[0]!r} lacks {missing}"
        for hook in POLICY_HOOKS:  # each stub says what it is for
            stub = re.search(rf"def {hook}\(.*\):\n(.*)\n", source).group(1)
            assert "#" in stub, f"{path.name}: {hook} has no comment saying what it is for"


@pytest.mark.parametrize("blank", ["15.5", (15, 5), "16 GB"])
def test_a_number_written_as_text_or_with_a_comma_is_named_not_crashed_on(blank):
    """Lab 00's box teaches `15.5`, not `"15.5"` or `15,5`; its check says so instead of raising."""
    from lazymoe.exercises import lab00

    result = lab00.check_reading(blank, 8, 0)
    assert not result.passed and result.started
    assert f"{blank!r} is not a number" in result.message and "15.5" in result.message
