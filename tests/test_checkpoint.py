"""Checkpoints: exact round trips, refusal of foreign/broken/pickled files, and no mutation."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from workbench.errors import CheckpointError
from workbench.models import (WhisperCTC, build_model, conformer_ctc, load_checkpoint, load_demo,
                              model_fingerprint, read_checkpoint_metadata, save_checkpoint)


class Sneaky:
    """A class defined here: unpickling it would need to run this module's code."""

    def __reduce__(self):  # what a malicious pickle would do; weights_only must refuse it
        return (print, ("pickled code ran",))


def _snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) and a[k].dtype == b[k].dtype
                                        for k in a)


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_float32_round_trip_is_exact_and_model_unchanged(tmp_path: Path, suffix: str) -> None:
    torch.manual_seed(0)
    model = conformer_ctc("tiny").train()
    before = _snapshot(model)
    path = save_checkpoint(model, tmp_path / f"m{suffix}", {"wer": 0.5, "note": "x"},
                           dtype=torch.float32)
    assert _same(before, model.state_dict()) and model.training  # saving did not touch it
    loaded = load_checkpoint(path)
    assert type(loaded) is type(model) and loaded.config == model.config
    assert not loaded.training
    assert _same(before, loaded.state_dict())
    assert read_checkpoint_metadata(path) == {"wer": 0.5, "note": "x"}
    assert model_fingerprint(loaded) == model_fingerprint(model)


def test_float16_round_trip_is_the_fp16_rounding(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = build_model("whisper_ctc", n_layers=1, d_model=64, n_heads=1, d_ff=128, n_ctx=50,
                        head_dim=32)
    path = save_checkpoint(model, tmp_path / "w.safetensors")  # float16 by default
    loaded = load_checkpoint(path)
    assert isinstance(loaded, WhisperCTC) and loaded.config == model.config
    for (name, a), b in zip(model.state_dict().items(), loaded.state_dict().values()):
        assert b.dtype == torch.float32, name
        assert torch.equal(a.half().float(), b), name
    assert model.conv1.weight.dtype == torch.float32
    from safetensors import safe_open
    with safe_open(str(path), framework="pt") as f:
        assert json.loads(f.metadata()["model"])["family"] == "whisper_ctc"
        assert f.get_tensor("conv1.weight").dtype == torch.float16


def test_wrong_family_is_refused(tmp_path: Path) -> None:
    path = save_checkpoint(conformer_ctc("tiny"), tmp_path / "c.safetensors")
    with pytest.raises(CheckpointError, match=r"c\.safetensors: holds a 'conformer_ctc' model, "
                                              r"expected 'whisper_ctc'"):
        load_checkpoint(path, family="whisper_ctc")
    # a file claiming one family but holding another's tensors: named missing/unexpected tensors
    from safetensors.torch import load_file, save_file
    whisper = build_model("whisper_ctc", n_layers=1)
    save_file(load_file(str(path)), str(tmp_path / "lie.safetensors"),
              metadata={"format": "workbench-ctc/1", "model": json.dumps(whisper.describe())})
    with pytest.raises(CheckpointError, match=r"lie\.safetensors: tensors do not match a "
                                              r"'whisper_ctc'.*missing \['conv1\.weight'"):
        load_checkpoint(tmp_path / "lie.safetensors")


def test_missing_and_misshaped_tensors_are_named(tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file
    path = save_checkpoint(conformer_ctc("tiny"), tmp_path / "c.safetensors")
    from safetensors import safe_open
    with safe_open(str(path), framework="pt") as f:
        header = f.metadata()
    tensors = load_file(str(path))
    del tensors["blocks.1.attn.v_proj.bias"]
    tensors["ctc_head.bias"] = torch.zeros(30)
    save_file(tensors, str(tmp_path / "broken.safetensors"), metadata=header)
    with pytest.raises(CheckpointError, match=r"broken\.safetensors.*missing "
                                              r"\['blocks\.1\.attn\.v_proj\.bias'\].*mis-shaped.*"
                                              r"ctc_head\.bias \(30,\) vs \(29,\)"):
        load_checkpoint(tmp_path / "broken.safetensors")


def test_pickled_code_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "evil.pt"
    torch.save({"format": "workbench-ctc/1", "payload": Sneaky()}, path)
    with pytest.raises(CheckpointError, match=r"evil\.pt: contains pickled code, not a "
                                              r"weights-only checkpoint"):
        load_checkpoint(path)
    assert "pickled code ran" not in capsys.readouterr().out


def test_foreign_files_are_refused(tmp_path: Path) -> None:
    from safetensors.torch import save_file
    save_file({"w": torch.zeros(2)}, str(tmp_path / "plain.safetensors"))
    with pytest.raises(CheckpointError, match=r"plain\.safetensors: safetensors file without "
                                              r"workbench metadata"):
        load_checkpoint(tmp_path / "plain.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"\x00" * 16)
    with pytest.raises(CheckpointError, match=r"junk\.safetensors: not a readable safetensors"):
        load_checkpoint(tmp_path / "junk.safetensors")
    (tmp_path / "junk.pt").write_bytes(b"not a torch file at all")
    with pytest.raises(CheckpointError, match=r"junk\.pt: not a readable torch checkpoint"):
        load_checkpoint(tmp_path / "junk.pt")
    torch.save({"state_dict": {}}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match=r"other\.pt: not a workbench checkpoint"):
        load_checkpoint(tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="no such checkpoint file"):
        load_checkpoint(tmp_path / "absent.safetensors")


def test_load_demo_missing_says_how_to_train(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match=r"demo model is missing.*workbench train --demo"):
        load_demo(tmp_path)
    model = conformer_ctc("tiny")
    save_checkpoint(model, tmp_path / "model.safetensors", dtype=torch.float32)
    assert _same(_snapshot(model), load_demo(tmp_path).state_dict())


def test_fingerprint_ignores_values_but_not_shapes() -> None:
    torch.manual_seed(0)
    a = conformer_ctc("tiny")
    torch.manual_seed(1)
    b = conformer_ctc("tiny")
    assert model_fingerprint(a) == model_fingerprint(b)
    assert len(model_fingerprint(a)) == 64
    c = conformer_ctc("tiny")
    c.ctc_head = torch.nn.Linear(64, 10)  # same config, different parameter shapes
    assert model_fingerprint(c) != model_fingerprint(a)
