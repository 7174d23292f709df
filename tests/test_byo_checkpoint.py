"""Checkpoints of models adapted by workbench.byo: the file holds weights (and the pruned
structure), not the foreign model's code. `workbench apply` refuses one in one line that gives the
fix, and the fix (`load_checkpoint(path, base=adapt(<your model>))`) rebuilds the saved model."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from toys import torchaudio_conformer
from workbench import compress
from workbench.byo import adapt
from workbench.errors import CheckpointError
from workbench.models import load_checkpoint, save_checkpoint
from workbench.plan import CompressionPlan, LayerConfig, PruneConfig

REPO = Path(__file__).resolve().parents[1]


def _conformer(ffn: int = 64):
    return torchaudio_conformer(d=32, heads=4, ffn=ffn, layers=2, kernel=7)


PLAN = CompressionPlan().with_group("ffn", LayerConfig(prune=PruneConfig(
    structure="neurons", amount=0.5)))


def test_apply_refuses_an_adapted_checkpoint_in_one_line_with_the_fix(tmp_path: Path) -> None:
    checkpoint = save_checkpoint(adapt(_conformer()), tmp_path / "adapted.safetensors",
                                 dtype=torch.float32)
    plan = tmp_path / "plan.json"
    plan.write_text(CompressionPlan().to_json())
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "workbench", "apply", "--plan", str(plan),
                           "--checkpoint", str(checkpoint), "--out", str(out)],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1, done.stderr
    assert lines[0].startswith("workbench apply: error: ") and str(checkpoint) in lines[0]
    assert "adapted by workbench.byo (torchaudio Conformer)" in lines[0]
    assert "load_checkpoint(path, base=workbench.adapt(" in lines[0]
    assert "workbench.export.apply_plan(model, plan, out)" in lines[0]
    assert not done.stdout and not out.exists()


def test_the_fix_rebuilds_a_pruned_adapted_model_exactly(tmp_path: Path) -> None:
    base = adapt(_conformer())
    before = {k: v.clone() for k, v in base.state_dict().items()}
    structure = PLAN
    pruned = compress(base, structure)
    with torch.no_grad():   # weights unlike anything a fresh build gives
        for p in pruned.parameters():
            p.add_(0.01 * torch.randn_like(p))
    path = save_checkpoint(pruned, tmp_path / "pruned.safetensors", structure=structure,
                           dtype=torch.float32)
    with pytest.raises(CheckpointError, match="base="):
        load_checkpoint(path)
    loaded = load_checkpoint(path, base=adapt(_conformer()))
    ref, got = pruned.state_dict(), loaded.state_dict()
    assert ref.keys() == got.keys() and all(torch.equal(ref[k], got[k]) for k in ref)
    assert sum(p.numel() for p in loaded.parameters()) < sum(p.numel() for p in base.parameters())
    x, lens = torch.randn(2, 32, 90), torch.tensor([90, 60])   # d 32: 32 feature channels
    torch.testing.assert_close(loaded(x, lens)[0], pruned(x, lens)[0], atol=0, rtol=0)
    assert not loaded.training
    assert all(torch.equal(before[k], v) for k, v in base.state_dict().items())  # base untouched


def test_the_fix_refuses_another_base_in_one_line(tmp_path: Path) -> None:
    path = save_checkpoint(adapt(_conformer()), tmp_path / "a.safetensors", dtype=torch.float32)
    other = adapt(torchaudio_conformer(d=48, heads=4, ffn=64, layers=2, kernel=7))
    with pytest.raises(CheckpointError, match="rebuild the model the file was saved from") as err:
        load_checkpoint(path, base=other)
    assert "\n" not in str(err.value) and "'d_model': 48" in str(err.value)
