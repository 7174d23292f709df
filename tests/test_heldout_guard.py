"""The held-out sets are never training data (issue 14: "the held-out sets stay untouched"), at
every entry point that trains on, or tunes by, a user-given manifest: the Python API
(recover_plan, recovery_items), `workbench recover --manifest / --val-manifest`,
`workbench recipe-search --manifest`, `workbench search --recover-manifest`, the engine's watched
recovery job and the dashboard's Recover tab. Each refuses each held-out set, as shipped and as a
copy under another name, before any model is loaded; an ordinary training manifest (the shipped
calibration set) gets past the check (to the model loading, which the tests stop there).

The rule (workbench.data.held_out): a manifest with ANY utterance of a held-out set is refused;
an utterance is theirs by the same audio file, the same audio bytes, or the same id and
transcript. Each criterion is tested on its own with a manifest only it can catch.
"""
from __future__ import annotations

import json
import shutil
import signal
from pathlib import Path

import pytest

from workbench import models
from workbench.__main__ import main
from workbench.compress import presets
from workbench.data import read_manifest, write_manifest
from workbench.data.manifest import Utterance
from workbench.errors import DataError, WorkbenchError
from workbench.paths import CALIB, REAL_TEST, SYNTH_TEST

SETS = {"real_test": REAL_TEST, "synth_test": SYNTH_TEST}
PLAN = presets.prune_ffn_neurons(0.5)


def renamed_copy(src: Path, folder: Path) -> Path:
    """The held-out manifest written elsewhere under another name (same utterances, same audio
    files: write_manifest makes the paths relative to the new folder)."""
    return write_manifest(read_manifest(src), folder / "my_training_set.jsonl")


def copy_with_audio(src: Path, folder: Path, n: int = 3) -> Path:
    """n utterances with their audio copied under new names and NEW ids: only the audio bytes
    tell them apart from ordinary data."""
    utts = []
    for i, u in enumerate(read_manifest(src)[:n]):
        audio = folder / "audio" / f"mine-{i}.flac"
        audio.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(u.audio_path, audio)
        utts.append(Utterance(audio, u.duration, u.text, f"mine-{i}"))
    return write_manifest(utts, folder / "copied_audio.jsonl")


def copy_without_audio(src: Path, folder: Path, n: int = 3) -> Path:
    """n utterances' ids and transcripts pointing at audio that is not there (a manifest copied
    without its folder): only the id + transcript tell."""
    lines = [json.dumps({"audio_filepath": f"converted/{u.id}.wav", "duration": u.duration,
                         "text": u.text, "id": u.id}) for u in read_manifest(src)[:n]]
    path = folder / "ids_only.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def calib_plus_one(src: Path, folder: Path) -> Path:
    """The calibration set with ONE held-out utterance added."""
    return write_manifest(read_manifest(CALIB) + read_manifest(src)[:1], folder / "mixed.jsonl")


FORMS = {"shipped": lambda src, folder: src, "renamed copy": renamed_copy}


@pytest.fixture(params=[(s, f) for s in SETS for f in FORMS],
                ids=[f"{s}-{f.replace(' ', '_')}" for s in SETS for f in FORMS])
def held_out(request, tmp_path) -> tuple[str, Path]:
    """(set name, a manifest of that held-out set: the shipped file or a renamed copy)."""
    name, form = request.param
    return name, FORMS[form](SETS[name], tmp_path)


class ModelLoaded(WorkbenchError):
    """Raised instead of loading a model: the run got past the held-out check."""


@pytest.fixture
def no_model(monkeypatch):
    """Every model loader raises ModelLoaded (a refusal must come before any of them)."""
    def loaded(*args, **kwargs):
        raise ModelLoaded("ModelLoaded: the run got past the held-out check")
    monkeypatch.setattr(models, "load_demo", loaded)
    monkeypatch.setattr(models, "load_checkpoint", loaded)


def run(capsys, argv: list[str]) -> tuple[int, str]:
    handler = signal.getsignal(signal.SIGTERM)   # main() installs its own; give pytest its back
    try:
        code = main(argv)
    finally:
        signal.signal(signal.SIGTERM, handler)
    return code, capsys.readouterr().err


def refused_line(code: int, err: str, option: str, manifest: Path, name: str) -> None:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert option in lines[0] and str(manifest) in lines[0], lines[0]
    assert f"held-out set {name}" in lines[0] and "ModelLoaded" not in lines[0], lines[0]


# ---- the rule --------------------------------------------------------------------------------
@pytest.mark.parametrize("name", SETS)
@pytest.mark.parametrize("make,how", [
    (renamed_copy, "same audio file"), (copy_with_audio, "same audio bytes"),
    (copy_without_audio, "same id and transcript"), (calib_plus_one, "same audio file")],
    ids=["renamed", "audio-copied-new-ids", "ids-without-audio", "calib-plus-one"])
def test_each_criterion_finds_held_out_utterances(tmp_path, name, make, how):
    from workbench.data.held_out import find_held_out
    manifest = make(SETS[name], tmp_path)
    match = find_held_out(manifest)
    assert match is not None and match.held_out == name and match.how == how
    expected = {renamed_copy: len(read_manifest(SETS[name])), calib_plus_one: 1}.get(make, 3)
    assert match.utterances == expected
    assert match.total == len(read_manifest(manifest))


@pytest.mark.parametrize("name", SETS)
def test_the_held_out_manifest_itself_and_a_link_to_it_are_refused_unread(tmp_path, name):
    from workbench.data.held_out import find_held_out
    link = tmp_path / "link.jsonl"
    link.symlink_to(SETS[name])
    for manifest in (SETS[name], link):
        match = find_held_out(manifest)
        assert match is not None and match.how == "is that manifest" and match.held_out == name


def test_ordinary_training_data_is_accepted(tmp_path):
    """The calibration set (training-side utterances) and a set that shares only transcripts
    with a held-out one (other audio, other ids) pass."""
    from workbench.data.held_out import find_held_out, refuse_held_out
    calib = read_manifest(CALIB)
    same_words = [Utterance(calib[i].audio_path, calib[i].duration, u.text, f"mine-{i}")
                  for i, u in enumerate(read_manifest(REAL_TEST)[:5])]
    other = write_manifest(same_words, tmp_path / "same_words.jsonl")
    assert find_held_out(CALIB) is None and find_held_out(other) is None
    refuse_held_out([CALIB, other])
    refuse_held_out(None)


# ---- the Python API --------------------------------------------------------------------------
def test_recover_plan_refuses_held_out_data_before_loading_a_model(held_out, no_model):
    from workbench.recovery import recover_plan
    name, manifest = held_out
    plan = PLAN
    with pytest.raises(DataError, match=f"held-out set {name}"):
        recover_plan(plan, manifests=[CALIB, manifest], progress=False)
    with pytest.raises(ModelLoaded):                 # ordinary data gets to the model
        recover_plan(plan, manifests=[CALIB], progress=False)


def test_recovery_items_refuses_held_out_data(held_out):
    from workbench.recovery import recovery_items
    name, manifest = held_out
    with pytest.raises(DataError, match=f"held-out set {name}"):
        recovery_items([manifest], progress=False)


# ---- the command lines -----------------------------------------------------------------------
def test_recover_cli_refuses_held_out_training_data(held_out, no_model, tmp_path, capsys):
    name, manifest = held_out
    plan = tmp_path / "plan.json"
    plan.write_text(PLAN.to_json())
    out = tmp_path / "out"
    code, err = run(capsys, ["recover", "--plan", str(plan), "--out", str(out),
                             "--manifest", str(CALIB), "--manifest", str(manifest)])
    refused_line(code, err, "--manifest", manifest, name)
    assert not out.exists()
    code, err = run(capsys, ["recover", "--plan", str(plan), "--out", str(out),
                             "--manifest", str(CALIB)])
    assert code == 2 and "ModelLoaded" in err     # ordinary data gets to the model


def test_recover_cli_refuses_a_copied_held_out_set_for_the_estimate(held_out, no_model,
                                                                    tmp_path, capsys):
    name, manifest = held_out
    plan = tmp_path / "plan.json"
    plan.write_text(PLAN.to_json())
    code, err = run(capsys, ["recover", "--plan", str(plan), "--out", str(tmp_path / "o"),
                             "--manifest", str(CALIB), "--val-manifest", str(manifest)])
    refused_line(code, err, "--val-manifest", manifest, name)


@pytest.mark.parametrize("make", [renamed_copy, copy_with_audio],
                         ids=["renamed", "audio-copied-new-ids"])
def test_recover_cli_refuses_an_estimate_on_copies_of_the_training_data(make, no_model, tmp_path,
                                                                        capsys):
    """The same rule keeps the estimate's validation set apart from the training data."""
    plan = tmp_path / "plan.json"
    plan.write_text(PLAN.to_json())
    val = make(CALIB, tmp_path)
    code, err = run(capsys, ["recover", "--plan", str(plan), "--out", str(tmp_path / "o"),
                             "--manifest", str(CALIB), "--val-manifest", str(val)])
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2 and len(lines) == 1 and "ModelLoaded" not in err, err
    assert "--val-manifest" in lines[0] and "training manifest" in lines[0]
    assert str(CALIB) in lines[0] and str(val) in lines[0]
    utts = read_manifest(CALIB)                   # disjoint halves: accepted, up to the model
    train = write_manifest(utts[:24], tmp_path / "halves" / "train.jsonl")
    val = write_manifest(utts[24:], tmp_path / "halves" / "val.jsonl")
    code, err = run(capsys, ["recover", "--plan", str(plan), "--out", str(tmp_path / "o"),
                             "--manifest", str(train), "--val-manifest", str(val)])
    assert code == 2 and "ModelLoaded" in err, err


def test_recipe_search_cli_refuses_held_out_data(held_out, no_model, tmp_path, capsys):
    name, manifest = held_out
    plan = tmp_path / "plan.json"
    plan.write_text(PLAN.to_json())
    out = tmp_path / "out"
    code, err = run(capsys, ["recipe-search", "--plan", str(plan), "--out", str(out),
                             "--manifest", str(manifest)])
    refused_line(code, err, "--manifest", manifest, name)
    assert not out.exists()
    code, err = run(capsys, ["recipe-search", "--plan", str(plan), "--out", str(out),
                             "--manifest", str(CALIB)])
    assert code == 2 and "ModelLoaded" in err


def test_search_cli_refuses_held_out_recovery_data(held_out, monkeypatch, tmp_path, capsys):
    from workbench.search import api

    def searched(*args, **kwargs):
        raise ModelLoaded("ModelLoaded: the search started")
    monkeypatch.setattr(api, "search", searched)
    name, manifest = held_out
    argv = ["search", "--out", str(tmp_path / "s"), "--executor", "serial",
            "--recover-minutes", "1"]
    code, err = run(capsys, [*argv, "--recover-manifest", str(manifest)])
    refused_line(code, err, "--recover-manifest", manifest, name)
    code, err = run(capsys, [*argv, "--recover-manifest", str(CALIB)])
    assert code == 2 and "ModelLoaded" in err


# ---- the dashboard ---------------------------------------------------------------------------
def test_watched_recovery_job_refuses_held_out_data_before_a_job_exists(held_out,
                                                                        tiny_conformer):
    pytest.importorskip("ipywidgets")
    from toys import random_eval_set
    from workbench.engine.jobs import JobQueue
    from workbench.engine.recovery_job import Recipe, watch_recovery
    name, manifest = held_out
    queue = JobQueue(workers=0)   # no worker: a submitted job would stay in pending()
    with pytest.raises(DataError, match=f"held-out set {name}"):
        watch_recovery(PLAN, tiny_conformer, random_eval_set(2),
                       Recipe(steps=1, minutes=None), manifests=[manifest], queue=queue)
    assert queue.pending() == []


def test_recover_tab_shows_the_refusal_and_trains_nothing(held_out, tiny_conformer, tmp_path):
    pytest.importorskip("ipywidgets")
    pytest.importorskip("plotly")
    from toys import random_eval_set
    from workbench.engine.session import Session
    from workbench.ui import Workbench
    name, manifest = held_out
    eval_set = random_eval_set(4)
    session = Session(tiny_conformer, eval_set, quick_utterances=2)
    app = Workbench(tiny_conformer, eval_set, device="rpi5", audio_seconds=2.0,
                    session=session)
    try:
        app.wait()
        app.set_plan(PLAN)
        tab = app.recovery
        tab.manifests, tab.out_dir = [manifest], tmp_path / "r"
        tab.steps.value, tab.minutes.value = 2, 0.0
        tab.start_button.click()
        assert f"held-out set {name}" in app.errors.text
        assert tab.job is None and not tab.start_button.disabled and tab.runs == 0
        assert not (tmp_path / "r").exists()
    finally:
        app.session.cancel()
