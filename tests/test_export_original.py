"""An export of a recovered model reports the original model's WER next to the recovered one's
(review 7, finding 5): `wer_uncompressed` is the model handed to the export without the plan,
which after a recovery is the recovered float model; `wer_original` is the model it came from,
and the card and the capstone grader use it as the baseline."""
from __future__ import annotations

import copy

import pytest
import torch

from workbench.evaluate import evaluate, load_eval_set
from workbench.export import ApplyOptions, apply_plan
from workbench.export.apply import recovery_teacher
from workbench.lessons.capstone import Budget, grade_report
from workbench.models import conformer_ctc, load_demo, save_checkpoint
from workbench.paths import REAL_TEST
from workbench.plan import CompressionPlan

torch.set_num_threads(1)


def _damaged(model: torch.nn.Module) -> torch.nn.Module:
    """A 'recovery' that hurt the float model: seeded noise on every block weight."""
    out = copy.deepcopy(model)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in out.blocks.parameters():
            p.add_(0.3 * p.std() * torch.randn(p.shape, generator=gen))
    return out


def test_the_report_and_card_give_the_original_model_wer_apart(tmp_path) -> None:
    demo = load_demo()
    recovered = _damaged(demo)
    options = ApplyOptions(eval_manifests=(REAL_TEST,), eval_limit=4, parity_utterances=1,
                           latency_seconds=1.0, latency_repeats=1, threads=(1,),
                           simulate_devices=False)
    report = apply_plan(recovered, CompressionPlan(), tmp_path / "out", options, original=demo)
    row = report["accuracy"][0]
    es = load_eval_set(REAL_TEST, limit=4, progress=False)
    original, handed = evaluate(demo, es), evaluate(recovered, es)
    assert original.wer != handed.wer                  # the check below can tell them apart
    assert row["wer_original"] == round(original.wer, 4)
    assert row["cer_original"] == round(original.cer, 4)
    assert row["wer_uncompressed"] == round(handed.wer, 4)
    assert "recovered float model" in report["reference_models"]["wer_uncompressed"]
    assert "before any recovery" in report["reference_models"]["wer_original"]
    card = (tmp_path / "out" / "MODEL_CARD.md").read_text()
    assert "| WER input model, no plan | WER original model |" in card
    grade = grade_report(report, Budget(max_mb=1e3, max_rtf=1e9, max_delta_wer=1.0))
    wer = grade.criteria[2]
    assert "original model" in wer.name
    assert wer.value == pytest.approx(row["wer_ort"] - row["wer_original"])


def test_without_an_original_the_report_says_so() -> None:
    from workbench.export.report import reference_models
    refs = reference_models(False)
    assert refs["wer_original"].startswith("not measured")
    report = {"files": {"model.onnx": {"bytes": 1}}, "accuracy": [
        {"set": "s", "utterances": 1, "wer_ort": 0.3, "wer_uncompressed": 0.25}]}
    wer = grade_report(report, Budget(max_mb=1.0)).criteria[2]
    assert "model handed to the export" in wer.name and wer.value == pytest.approx(0.05)


def test_a_recovery_checkpoint_names_its_teacher(tmp_path) -> None:
    torch.manual_seed(0)
    teacher = conformer_ctc("tiny", n_layers=1).eval()
    teacher_path = save_checkpoint(teacher, tmp_path / "teacher.safetensors",
                                   dtype=torch.float32)
    student = save_checkpoint(_damaged(teacher), tmp_path / "student.safetensors", metadata={
        "recovery": {"teacher": str(teacher_path)}})
    found = recovery_teacher(str(student))
    assert found is not None
    for name, tensor in teacher.state_dict().items():
        torch.testing.assert_close(found.state_dict()[name], tensor, rtol=0, atol=0)
    assert recovery_teacher(str(teacher_path)) is None          # not written by a recovery
    gone = save_checkpoint(teacher, tmp_path / "orphan.safetensors", metadata={
        "recovery": {"teacher": str(tmp_path / "deleted.safetensors")}})
    assert recovery_teacher(str(gone)) is None
    assert recovery_teacher(None) is None
