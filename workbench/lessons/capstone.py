"""The capstone lab's grader: an export's report.json against a budget.

    budget = Budget(max_mb=9.0, device="rpi4", max_rtf=0.5, max_delta_wer=0.02)
    grade = grade_report(out / "report.json", budget)    # one line per criterion, and a verdict

Everything is read from the report `workbench apply` (or `apply_plan`) wrote, so the grade is of
the file that would ship, not of a simulation: the size is model.onnx's bytes, the accuracy is
ONNX Runtime's WER on the eval set against the original model's WER on the same utterances
(`wer_original`; a report without it: the model handed to the export), the real-time factor
is the report's simulated latency on the budget's device (needs
ApplyOptions(simulate_devices=True), the default). A criterion the report cannot answer fails
and says why.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from workbench.errors import WorkbenchError


@dataclass(frozen=True)
class Budget:
    """What the capstone's model must meet. Units: MB = 1e6 bytes; RTF = compute s / audio s."""

    max_mb: float
    device: str = "rpi4"
    max_rtf: float = 0.5
    max_delta_wer: float = 0.02


@dataclass(frozen=True)
class Criterion:
    name: str
    value: float | None
    limit: float
    passed: bool
    note: str

    def text(self) -> str:
        mark = "✓" if self.passed else "✗"
        shown = "missing" if self.value is None else f"{self.value:.4g}"
        return f"{mark} {self.name}: {shown} (limit {self.limit:g}) {self.note}".rstrip()


@dataclass(frozen=True)
class Grade:
    criteria: tuple[Criterion, ...]

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.criteria)

    def text(self) -> str:
        verdict = ("PASSED: every budget is met" if self.passed else
                   f"NOT YET: {sum(not c.passed for c in self.criteria)} of "
                   f"{len(self.criteria)} budgets missed")
        return "\n".join([verdict, *(f"  {c.text()}" for c in self.criteria)])

    def __repr__(self) -> str:
        return self.text()


def _load(report: dict | str | Path) -> dict:
    if isinstance(report, dict):
        return report
    path = Path(report)
    if not path.is_file():
        raise WorkbenchError(f"{path}: no report.json there; export the plan first "
                             f"(apply_plan(...) or `workbench apply --plan P --out DIR`).")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise WorkbenchError(f"{path}: not a JSON report ({err}).") from None


def _get(data: Any, *keys: Any) -> Any:
    for key in keys:
        if isinstance(data, dict) and key in data:
            data = data[key]
        elif isinstance(data, list) and isinstance(key, int) and -len(data) <= key < len(data):
            data = data[key]
        else:
            return None
    return data


def grade_report(report: dict | str | Path, budget: Budget) -> Grade:
    """Grade an export's report (a path to report.json, or its parsed dict) against `budget`.

    The WER increase is the file's ONNX Runtime WER minus the original model's WER on the same
    utterances: the report's `wer_original`, measured when the export was given the model you
    started from (`apply_plan(recovered, plan, out, options, original=model)`; `workbench apply
    --checkpoint` finds a recovery's teacher itself). A report without it has only
    `wer_uncompressed`, the model handed to the export without its plan: after a recovery (QAT,
    distillation) that is the *recovered* float model, so a recovery that made the float model
    worse would hide its damage; the criterion then says it compares against that model."""
    data = _load(report)
    deliverable = data.get("deliverable", "model.onnx")
    size = _get(data, "files", deliverable, "bytes")
    mb = None if size is None else size / 1e6
    criteria = [Criterion("size of " + str(deliverable) + " (MB)", mb, budget.max_mb,
                          mb is not None and mb <= budget.max_mb,
                          "" if mb is not None else "(the report lists no file bytes)")]
    rtf = _get(data, "simulated_latency", "devices", budget.device, "real_time_factor")
    why = ""
    if rtf is None:
        why = ("(no simulated latency in the report: export with "
               "ApplyOptions(simulate_devices=True))" if "unavailable" in
               (data.get("simulated_latency") or {}) else f"(no device '{budget.device}')")
    criteria.append(Criterion(f"real-time factor on {budget.device} (simulated)", rtf,
                              budget.max_rtf, rtf is not None and rtf < budget.max_rtf, why))
    acc = _get(data, "accuracy", 0) or {}
    ort, base = acc.get("wer_ort"), acc.get("wer_uncompressed")
    against = "the model handed to the export (no original model in the report)"
    if acc.get("wer_original") is not None:
        base, against = acc["wer_original"], "the original model"
    delta = None if ort is None or base is None else ort - base
    criteria.append(Criterion(
        f"WER increase, ONNX Runtime vs {against}", delta, budget.max_delta_wer,
        delta is not None and delta <= budget.max_delta_wer,
        f"(WER {ort:.4f} vs {base:.4f} on {acc.get('utterances')} utterances of "
        f"{acc.get('set')})" if delta is not None else "(the report has no accuracy section)"))
    return Grade(tuple(criteria))
