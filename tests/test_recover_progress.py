"""`workbench recover`'s progress bar (issue 14, deliverable 4, the CLI side): next to the loss
it shows the WER estimate of the model being trained, the same estimate the dashboard plots
(workbench.recovery.WerProbe), computed on a validation split (never the held-out test sets)
and shown when it is computed.

A real CLI subprocess on a small random Whisper-CTC checkpoint: 4 steps on 32 calibration
prompts, estimates on the other 16 (written as two manifests, so nothing is trained on what is
estimated on). The bar's numbers are compared with the report's estimates and with the
estimate computed directly on the one-shot student.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from workbench.__main__ import main
from workbench.data import read_manifest
from workbench.paths import CALIB, REAL_TEST, SYNTH_TEST
from workbench.plan import CompressionPlan, LayerConfig, PruneConfig

PLAN = CompressionPlan().with_group("ffn", LayerConfig(prune=PruneConfig(amount=0.5,
                                                                         structure="neurons")))
#: `wer=0.875@2`: the estimate and the step it was taken at (RecoveryBar)
WER_FIELD = re.compile(r"wer=(\d+\.\d{3})@(\d+)")


def _split_calib(tmp_path: Path) -> tuple[Path, Path]:
    """CALIB as two manifests (absolute audio paths): 32 utterances to train on, 16 others to
    estimate on."""
    rows = [json.loads(line) for line in CALIB.read_text().splitlines() if line.strip()]
    for row in rows:
        row["audio_filepath"] = str((CALIB.parent / row["audio_filepath"]).resolve())
    train, val = tmp_path / "train.jsonl", tmp_path / "val.jsonl"
    train.write_text("".join(json.dumps(r) + "\n" for r in rows[:32]))
    val.write_text("".join(json.dumps(r) + "\n" for r in rows[32:]))
    return train, val


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    from workbench.models import build_model, save_checkpoint
    d = tmp_path_factory.mktemp("recover-progress")
    torch.manual_seed(0)
    teacher = build_model("whisper_ctc", d_model=32, n_heads=4, n_layers=2, d_ff=64,
                          n_ctx=1500, head_dim=16).eval()
    checkpoint = save_checkpoint(teacher, d / "teacher.safetensors", dtype=torch.float32)
    (d / "plan.json").write_text(PLAN.to_json())
    train, val = _split_calib(d)
    return {"checkpoint": checkpoint, "plan": d / "plan.json", "train": train, "val": val}


def test_recover_progress_bar_shows_the_validation_wer_estimate(inputs, tmp_path):
    out = tmp_path / "r"
    proc = subprocess.run(
        [sys.executable, "-m", "workbench", "recover", "--plan", str(inputs["plan"]),
         "--checkpoint", str(inputs["checkpoint"]), "--out", str(out), "--steps", "4",
         "--manifest", str(inputs["train"]), "--val-manifest", str(inputs["val"]),
         "--val-every", "2", "--threads", "1"],
        capture_output=True, text=True, timeout=1800,
        env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout)
    estimates = report["estimates"]
    assert [e["step"] for e in estimates] == [0, 2, 4]
    assert all(e["utterances"] == 16 and "val.jsonl" in e["source"] for e in estimates)
    # every state of the bar (tqdm redraws it after \r); the WER field appears once computed
    states = [s for s in re.split(r"[\r\n]", proc.stderr) if s.startswith("recover")]
    shown = {(int(m.group(2)), m.group(1)) for s in states if (m := WER_FIELD.search(s))}
    assert shown == {(e["step"], f"{e['wer']:.3f}") for e in estimates}, states
    # an estimate taken after step k is shown with k steps done, never before
    for s in states:
        if (m := WER_FIELD.search(s)):
            assert int(re.search(r"(\d+)/4", s).group(1)) >= int(m.group(2)), s
    final = states[-1]
    assert "4/4" in final and "loss=" in final and f"@{estimates[-1]['step']}" in final
    # the step-0 estimate is the one-shot student's greedy WER on the validation utterances
    from workbench.compress import compress
    from workbench.evaluate import evaluate, load_eval_set
    from workbench.models import load_checkpoint
    student = compress(load_checkpoint(inputs["checkpoint"]), PLAN)
    probe = load_eval_set(inputs["val"], progress=False)
    assert estimates[0]["wer"] == pytest.approx(evaluate(student, probe).wer, abs=1e-9)
    assert {u.id for u in read_manifest(inputs["val"])}.isdisjoint(
        u.id for u in read_manifest(inputs["train"]))


@pytest.mark.parametrize("held_out", [REAL_TEST, SYNTH_TEST], ids=["real_test", "synth_test"])
def test_recover_refuses_a_held_out_set_for_the_estimate(inputs, tmp_path, capsys, held_out):
    code = main(["recover", "--plan", str(inputs["plan"]), "--checkpoint",
                 str(inputs["checkpoint"]), "--out", str(tmp_path / "o"), "--steps", "2",
                 "--manifest", str(inputs["train"]), "--val-manifest", str(held_out)])
    err = capsys.readouterr().err
    assert code == 2 and "--val-manifest" in err and "held-out" in err
    assert not (tmp_path / "o").exists()


def test_recover_refuses_a_training_manifest_for_the_estimate(inputs, tmp_path, capsys):
    code = main(["recover", "--plan", str(inputs["plan"]), "--checkpoint",
                 str(inputs["checkpoint"]), "--out", str(tmp_path / "o"), "--steps", "2",
                 "--manifest", str(inputs["train"]), "--val-manifest", str(inputs["train"])])
    err = capsys.readouterr().err
    assert code == 2 and "--val-manifest" in err and "training manifest" in err
    assert not (tmp_path / "o").exists()
