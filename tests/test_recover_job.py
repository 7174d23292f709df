"""Recovery as a cancellable engine job (workbench.recovery.submit_recovery), on a small model
and the shipped calibration manifest: progress per step, a live step log, cancel mid-run."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from workbench.compress.distill import RecoverConfig
from workbench.engine.jobs import RUN_LOCK, JobQueue
from workbench.models import build_model
from workbench.paths import DATA_DIR
from workbench.plan import CompressionPlan, LayerConfig, PruneConfig
from workbench.recovery import submit_recovery

CALIB = DATA_DIR / "calib" / "manifest.jsonl"
PLAN = CompressionPlan().with_group("ffn", LayerConfig(prune=PruneConfig(amount=0.5,
                                                                         structure="neurons")))


@pytest.fixture(scope="module")
def teacher():
    """A small random Whisper-CTC that takes the calibration prompts (up to 30 s)."""
    torch.manual_seed(0)
    return build_model("whisper_ctc", d_model=32, n_heads=4, n_layers=2, d_ff=64, n_ctx=1500,
                       head_dim=16).eval()


CFG = RecoverConfig(steps=3, lr=1e-3, warmup=1, max_batch_frames=3000)


def test_recovery_job_reports_each_step_and_saves(teacher, tmp_path: Path, monkeypatch) -> None:
    """... and holds the run lock for model runs only: training steps, not data building."""
    import workbench.recovery as recovery
    steps, progress, done, locked = [], [], [], {}
    real_items = recovery.recovery_items

    def items(*args, **kwargs):
        locked["data"] = RUN_LOCK.locked()
        return real_items(*args, **kwargs)
    monkeypatch.setattr(recovery, "recovery_items", items)

    def on_step(entry: dict) -> None:
        steps.append(entry)
        locked.setdefault("steps", []).append(RUN_LOCK.locked())
    job = submit_recovery(PLAN, teacher=teacher, config=CFG, manifests=[CALIB],
                          out_dir=tmp_path / "r", evaluate_sets=False,
                          on_step=on_step, on_progress=lambda d, t: progress.append((d, t)),
                          on_done=done.append, queue=JobQueue(workers=1))
    assert job.wait(600)
    assert job.state == "done", job.error
    assert [e["step"] for e in steps] == [1, 2, 3] and all("loss" in e for e in steps)
    assert progress == [(1, 3), (2, 3), (3, 3)]
    assert done[0].checkpoint.is_file()
    assert locked == {"data": False, "steps": [True, True, True]}
    assert not RUN_LOCK.locked()


def test_cancelled_recovery_job_saves_nothing(teacher, tmp_path: Path) -> None:
    out = tmp_path / "r"
    holder = {}

    def on_progress(done: int, total: int) -> None:
        if done == 1:
            holder["job"].cancel()

    holder["job"] = job = submit_recovery(
        PLAN, teacher=teacher, config=RecoverConfig(steps=50, warmup=1,
                                                          max_batch_frames=3000),
        manifests=[CALIB], out_dir=out, evaluate_sets=False, on_progress=on_progress,
        queue=JobQueue(workers=1))
    assert job.wait(600)
    assert job.state == "cancelled"
    assert not (out / "model.safetensors").exists()
    assert not RUN_LOCK.locked()
