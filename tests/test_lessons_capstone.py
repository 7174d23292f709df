"""The capstone grader reads an export's report.json and says which budget is met and which not."""
from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from workbench.errors import WorkbenchError
from workbench.lessons.capstone import Budget, grade_report

#: The fields of a report `apply_plan` writes (workbench/export/apply.py), with made-up values.
REPORT = {
    "deliverable": "model.onnx",
    "files": {"model.onnx": {"bytes": 8_400_000, "sha256": "0" * 64}},
    "accuracy": [{"set": "real_test", "utterances": 40, "wer_ort": 0.262, "wer_sim": 0.260,
                  "wer_uncompressed": 0.250}],
    "simulated_latency": {"audio_seconds": 5.0, "devices": {
        "rpi4": {"ms": 1500.0, "real_time_factor": 0.30},
        "cortex_m7": {"ms": 90000.0, "real_time_factor": 18.0}}},
}
BUDGET = Budget(max_mb=9.0, device="rpi4", max_rtf=0.5, max_delta_wer=0.02)


def test_a_report_within_budget_passes(tmp_path: Path) -> None:
    path = tmp_path / "report.json"
    path.write_text(json.dumps(REPORT))
    grade = grade_report(path, BUDGET)
    assert grade.passed and "PASSED" in grade.text()
    assert [c.value for c in grade.criteria] == [pytest.approx(8.4), 0.30, pytest.approx(0.012)]


@pytest.mark.parametrize("edit, failing", [
    (lambda r: r["files"]["model.onnx"].update(bytes=9_500_000), "size"),
    (lambda r: r["accuracy"][0].update(wer_ort=0.30), "WER increase"),
    (lambda r: r["simulated_latency"]["devices"]["rpi4"].update(real_time_factor=0.5), "real-time"),
])
def test_each_missed_budget_fails_alone_and_is_named(edit, failing: str) -> None:
    report = copy.deepcopy(REPORT)
    edit(report)
    grade = grade_report(report, BUDGET)
    assert not grade.passed and "NOT YET: 1 of 3" in grade.text()
    assert [c.name for c in grade.criteria if not c.passed][0].startswith(failing)


def test_missing_sections_fail_with_the_reason() -> None:
    report = copy.deepcopy(REPORT)
    report["simulated_latency"] = {"unavailable": "not requested"}
    del report["accuracy"]
    grade = grade_report(report, BUDGET)
    text = grade.text()
    assert not grade.passed and "simulate_devices=True" in text and "no accuracy" in text
    assert "no device 'pi9'" in grade_report(REPORT, Budget(9.0, device="pi9")).text()


def test_a_missing_or_broken_report_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(WorkbenchError, match="no report.json"):
        grade_report(tmp_path / "nope" / "report.json", BUDGET)
    bad = tmp_path / "report.json"
    bad.write_text("{not json")
    with pytest.raises(WorkbenchError, match="not a JSON report"):
        grade_report(bad, BUDGET)


def test_the_reports_original_model_is_the_baseline_not_the_recovered_one() -> None:
    # after a harmful recovery the exported model's own float WER (the report's
    # wer_uncompressed) has drifted up with it: against it the file looks fine; the original
    # model's WER (wer_original, measured when the export is given original=) shows the damage
    drifted = copy.deepcopy(REPORT)
    drifted["accuracy"][0].update(wer_ort=0.33, wer_uncompressed=0.32)
    grade = grade_report(drifted, BUDGET)
    assert grade.passed and "handed to the export" in grade.criteria[2].name
    drifted["accuracy"][0]["wer_original"] = 0.25
    grade = grade_report(drifted, BUDGET)
    assert not grade.passed
    wer = grade.criteria[2]
    assert wer.value == pytest.approx(0.08) and wer.name.endswith("vs the original model")
    within = copy.deepcopy(REPORT)
    within["accuracy"][0]["wer_original"] = 0.25
    assert grade_report(within, BUDGET).passed
