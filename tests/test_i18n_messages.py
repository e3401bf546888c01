"""The package's learner-facing messages in Korean: doctor, progress, checks, hints, the calculator widget.

English is the source; with LAZYMOE_LANG=ko every message marked with `_()` comes from
lazymoe/locale/ko/LC_MESSAGES/lazymoe.po. (conftest.py sets LAZYMOE_LANG=en for every other test.)
"""

from __future__ import annotations

import json
import re

import polib
import pytest

from lazymoe import cli, doctor
from lazymoe.exercises import lab01, solutions
from lazymoe.i18n import messages
from lazymoe.i18n.cli import check_messages
from lazymoe.i18n.width import cells
from lazymoe.quiz.progress import ExerciseRecord

HANGUL = re.compile(r"[\uac00-\ud7a3]")
PLACEHOLDER = re.compile(r"\{[^{}]*\}")


@pytest.fixture
def korean(monkeypatch):
    monkeypatch.setenv("LAZYMOE_LANG", "ko")


def test_the_korean_catalog_is_complete_and_current():
    assert check_messages("ko") == []


def test_every_translation_keeps_the_placeholders_of_its_english():
    po = polib.pofile(str(messages.catalog_path("ko")))
    for entry in po:
        if entry.obsolete:
            continue
        translations = list(entry.msgstr_plural.values()) if entry.msgid_plural else [entry.msgstr]
        for text in translations:
            assert sorted(PLACEHOLDER.findall(text)) == sorted(PLACEHOLDER.findall(entry.msgid)), entry.msgid


def test_doctor_speaks_korean_and_keeps_its_status_codes(korean, capsys):
    report = doctor.run_checks()
    text = report.format()
    assert HANGUL.search(text)
    assert ("필수 점검을 모두 통과했습니다." in text) == report.ok
    assert "정보" in text and "정상" in text  # the status words, translated on screen
    cli.main(["doctor", "--json"])
    statuses = {c["status"] for c in json.loads(capsys.readouterr().out)}
    assert statuses <= {"OK", "FAIL", "OPTIONAL", "INFO"}  # --json keeps the codes scripts read


def test_doctor_is_english_with_lazymoe_lang_en():
    assert not HANGUL.search(doctor.run_checks().format())


def test_lazymoe_progress_speaks_korean(korean, capsys):
    assert cli.main(["progress"]) == 0
    out = capsys.readouterr().out
    assert "퀴즈 진행 상황" in out and "실습 연습 문제:" in out
    assert "점수" in out.splitlines()[2]  # the table's header row


def test_exercise_status_words_in_korean(korean):
    assert ExerciseRecord(attempts=1, solved=True, solved_at=1.0).status() == "첫 시도에 해결"
    assert ExerciseRecord(attempts=3, solved=True, hints_seen=1).status() == "힌트를 보고 해결"
    assert ExerciseRecord(attempts=3, solved=True).status() == "3번 시도해 해결"
    assert ExerciseRecord(attempts=2).status() == "아직 해결 못 함(2번 시도)"


def test_a_check_explains_a_mistake_in_korean(korean):
    upside_down = lambda bandwidth_gbps, bytes_per_token: bytes_per_token / (bandwidth_gbps * 1e9)  # noqa: E731
    result = lab01.check_decode_bound(upside_down)
    assert not result.passed
    assert result.message.startswith("나눗셈 방향이 반대입니다")
    assert str(result).startswith("[아직] 디코드 상한: ")
    assert "막히나요? hint(\"lab01.decode_bound\")" in result.details


def test_a_hint_follows_the_language_chosen_after_import(monkeypatch):
    english = solutions.hint("lab01.decode_bound")
    assert english.title == "Hint 1 of 3 for the decode bound" and not HANGUL.search(str(english))
    monkeypatch.setenv("LAZYMOE_LANG", "ko")
    korean = solutions.hint("lab01.decode_bound")  # the ladder was imported in English above
    assert korean.title == "디코드 상한 힌트 3개 중 2번째"
    assert korean.text.startswith("대역폭의 단위는 GB/s입니다.")


def test_calculator_widget_labels_in_korean(korean):
    pytest.importorskip("ipywidgets")
    from lazymoe.widgets.calculator import CalculatorWidget

    widget = CalculatorWidget(gpu="RTX 4060 Laptop", model="Qwen3-30B-A3B", fmt="Q4_K_M")
    assert widget.gpu_count.description == "GPU 수" and widget.strategy.description == "전략"
    assert widget.hit_rate.description == "적중률"
    assert HANGUL.search(widget.stack_figure.layout.title.text)
    assert widget.curve_figure.layout.xaxis.title.text == "파라미터 수(10억 개)"
    assert widget.plan.verdict.label in widget.summary.value and HANGUL.search(widget.plan.verdict.label)
    assert "디코드 최대" in widget.summary.value


def test_quiz_widget_starts_in_the_learners_language(korean):
    pytest.importorskip("ipywidgets")
    from lazymoe.widgets import quiz as quiz_widget

    widget = quiz_widget.build("01")
    assert widget.lang == "ko" and "퀴즈" in widget.title.value
    widget.language.value = "en"  # the toggle still switches
    assert widget.lang == "en" and "Quiz" in widget.title.value


def test_calculator_refusals_in_korean(korean):
    """A strategy the machine cannot run says why in the learner's language (the widget and
    `lazymoe calc` print these messages as they are)."""
    from lazymoe import calculator as calc

    laptop = calc.Machine.from_names("Laptop, DDR5-5600 dual channel", 32, gpu="RTX 4060 Laptop")
    with pytest.raises(calc.CalculatorError) as refused:
        calc.plan(laptop, calc.Workload.from_names("Qwen3-30B-A3B", "Q4_K_M"), "multi_gpu")
    assert HANGUL.search(str(refused.value)) and "multi_gpu" in str(refused.value)
    with pytest.raises(calc.CalculatorError) as dense:
        calc.plan(laptop, calc.Workload.from_names("Llama-3.1-8B", "Q4_K_M"), "cpu_moe")
    assert HANGUL.search(str(dense.value)) and "Llama-3.1-8B" in str(dense.value)


def test_calculator_memory_labels_in_korean_keep_their_chart_colors(korean):
    """The memory chart's labels come from the strategies; in Korean they still find their colors."""
    from lazymoe import calculator as calc

    laptop = calc.Machine.from_names("Laptop, DDR5-5600 dual channel", 32, gpu="RTX 4060 Laptop")
    workload = calc.Workload.from_names("Qwen3-30B-A3B", "Q4_K_M")
    labels = [label for name in ("cpu_moe", "expert_cache", "layer_split", "layer_streaming")
              for _tier, label, _bytes in calc.plan(laptop, workload, name).memory.items]
    assert labels and all(HANGUL.search(label) for label in labels), labels
    assert "전문가 외 가중치" in labels and "KV 캐시" in labels and "런타임 오버헤드" in labels
    assert any(label.endswith("개 층의 전문가") for label in labels)
    assert "가중치당" in workload.describe_formats()
    pytest.importorskip("ipywidgets")
    from lazymoe.widgets.calculator import _color

    assert all(_color(label) != "#bab0ac" for label in labels), "a label lost its color"


def test_measure_table_and_figure_in_korean(korean):
    from lazymoe.measure import Measurement, MeasureReport

    report = MeasureReport([Measurement("RAM copy, 1 thread", 20.0, 2**26, 3, [0.1], 89.6, "DDR5-5600")],
                           ["GPU copies: no CUDA GPU visible to torch"])
    table = report.table()
    assert table.startswith("측정 항목") and "데이터시트 = DDR5-5600" in table and "건너뜀:" in table
    assert "RAM copy, 1 thread" in table  # a measurement's name is data: it stays as it is
    header, row = table.splitlines()[:2]
    assert cells(header[: header.index("GB/s") + 4]) == cells(row[: row.index("20.00") + 5])  # aligned
    fig = report.figure()
    assert fig.layout.title.text == "측정한 대역폭과 데이터시트 값 비교"
    assert [t.name for t in fig.data] == ["측정값", "데이터시트"]
    assert HANGUL.search(fig.layout.yaxis.title.text)


def test_hardware_table_in_korean_keeps_its_row_names(korean):
    from lazymoe.hardware import MachineInfo

    info = MachineInfo("Linux 6.1", "3.11", "Test CPU", 4, 8, ["avx2"], 16 * 2**30, 8 * 2**30,
                       gpu_note="NVIDIA GPU를 찾지 못함(NVMLError)")
    lines = info.table().splitlines()
    assert [line.split()[0] for line in lines] == ["os", "cpu", "isa", "ram", "gpu"]  # lab00 reads these
    assert lines[1].endswith("4코어, 8스레드") and "전체 16.0 GiB, 사용 가능 8.0 GiB" in lines[3]


def test_case_studies_in_korean(korean):
    from lazymoe import calculator as calc

    case = calc.case_study("rotary-gpu-cpu-moe")
    assert HANGUL.search(case.title) and HANGUL.search(case.gap)
    assert all(HANGUL.search(text) for text in case.assumptions)
    assert "arXiv:2605.29135" in case.source and "21.06 tok/s" in case.source  # names and figures kept


def test_lazymoe_calc_help_in_korean(korean, capsys):
    with pytest.raises(SystemExit):
        cli.main(["calc", "--help"])
    out = capsys.readouterr().out
    assert out.startswith("사용법: lazymoe calc")
    assert "카탈로그의 GPU 이름" in out and "--gpu GPU" in out and "옵션:" in out
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    assert "명령줄에서 쓰는 lazymoe" in capsys.readouterr().out


def test_lazymoe_calc_help_in_english_has_no_hangul(capsys):
    with pytest.raises(SystemExit):
        cli.main(["calc", "--help"])
    out = capsys.readouterr().out
    assert out.startswith("usage: lazymoe calc") and not HANGUL.search(out)
