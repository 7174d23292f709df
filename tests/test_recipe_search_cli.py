"""`workbench recipe-search` on the shipped demo model (1-step trials on the shipped calibration
manifest, so CI needs no corpus), and one refusal per bad input."""
import json
from pathlib import Path

import pytest

from workbench.__main__ import main
from workbench.export.reference_plans import pruned_int8_plan
from workbench.paths import CALIB, REAL_TEST, SYNTH_TEST
from workbench.plan import CompressionPlan


@pytest.fixture
def plan_file(tmp_path: Path) -> Path:
    path = tmp_path / "plan.json"
    path.write_text(pruned_int8_plan().to_json())
    return path


def _run(args: list[str], capsys) -> tuple[int, str, str]:
    code = main(["recipe-search", *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_recipe_search_writes_trials_and_the_best_recipe(plan_file, tmp_path, capsys):
    out = tmp_path / "recipe"
    code, stdout, err = _run(["--plan", str(plan_file), "--out", str(out), "--manifest",
                              str(CALIB), "--trials", "2", "--trial-steps", "1",
                              "--val-items", "4", "--json"], capsys)
    assert code == 0, err
    doc = json.loads(stdout)
    table = json.loads((out / "trials.json").read_text())
    best = json.loads((out / "best_recipe.json").read_text())
    assert doc["table"] == table and len(table["trials"]) == 2
    assert table["trials"][0]["recipe"] == {"lr": 5e-4, "hidden_share": 0.5, "ctc_weight": 0.2,
                                            "train": "all", "depth_tilt": 0.0}
    assert table["trials"][0]["recipe"] != table["trials"][1]["recipe"]
    assert all(r["steps"] == 1 and r["val_wer"] is not None for r in table["trials"])
    assert table["val_items"] >= 4 and 40 < table["train_items"] + table["val_items"] <= 48
    assert best["trial"] == table["best_trial"] == min(
        table["trials"], key=lambda r: (r["val_kd"], r["val_wer"], r["number"]))["number"]
    assert table["objective"] == "val_kd"
    assert best["recover_config"]["steps"] == 360 and best["recover_config"]["max_minutes"] is None


def test_recipe_search_then_recovers_with_the_best_recipe(plan_file, tmp_path, capsys,
                                                         monkeypatch):
    """--recover-steps hands the best recipe to recover_plan. Its held-out report (tested in
    test_recover_cli) is cut to 2 utterances per set here: 5 full evaluations of both sets
    took 3 minutes on a busy machine."""
    import importlib

    from workbench.evaluate import load_eval_set
    recovery = importlib.import_module("workbench.recovery")
    monkeypatch.setattr(recovery, "_held_out_sets", lambda: {
        name: load_eval_set(m, limit=2, progress=False)
        for name, m in (("real_test", REAL_TEST), ("synth_test", SYNTH_TEST))})
    out = tmp_path / "recipe"
    code, stdout, err = _run(["--plan", str(plan_file), "--out", str(out), "--manifest",
                              str(CALIB), "--trials", "1", "--trial-steps", "1",
                              "--val-items", "8", "--recover-steps", "2", "--json"], capsys)
    assert code == 0, err
    doc = json.loads(stdout)
    report = json.loads((out / "recovered" / "recovery.json").read_text())
    best = json.loads((out / "best_recipe.json").read_text())
    assert report["steps"] == doc["recovered"]["steps"] == 2
    assert report["config"] == best["recover_config"]
    assert set(doc["recovered"]["greedy_wer_after"]) == {"real_test", "synth_test"}
    assert Path(doc["recovered"]["checkpoint"]).is_file()


BAD = [
    ("trials-0", ["--trials", "0"], "--trials"),
    ("trial-steps-0", ["--trial-steps", "0"], "--trial-steps"),
    ("val-items-0", ["--val-items", "0"], "--val-items"),
    ("objective", ["--objective", "bleu"], "--objective"),
    ("seed", ["--seed", "-1"], "--seed"),
    ("threads", ["--threads", "0"], "--threads"),
    ("recover-steps", ["--recover-steps", "0"], "--recover-steps"),
    ("manifest-missing", ["--manifest", "/nonexistent/m.jsonl"], "--manifest"),
    ("manifest-real-test", ["--manifest", str(REAL_TEST)], "held-out set real_test"),
    ("manifest-synth-test", ["--manifest", str(SYNTH_TEST)], "held-out set synth_test"),
    ("checkpoint-missing", ["--checkpoint", "/nonexistent/m.safetensors"], "--checkpoint"),
]


def _one_line(code: int, err: str, *names: str) -> None:
    """Exit status 2 and one error line naming the option and the value, no traceback."""
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert all(name in lines[0] for name in names), lines[0]


@pytest.mark.parametrize("extra,needle", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_recipe_search_refuses_a_bad_input(plan_file, tmp_path, capsys, extra, needle):
    out = tmp_path / "o"
    code, stdout, err = _run(["--plan", str(plan_file), "--out", str(out), *extra], capsys)
    _one_line(code, err, needle, extra[-1])
    assert stdout == "" and not out.exists()


def test_recipe_search_refuses_a_missing_plan(tmp_path, capsys):
    code, _, err = _run(["--plan", str(tmp_path / "none.json"), "--out", str(tmp_path / "o")],
                        capsys)
    _one_line(code, err, "--plan", "none.json")
    assert not (tmp_path / "o").exists()


def test_recipe_search_keeps_a_non_empty_out_folder(plan_file, tmp_path, capsys):
    out = tmp_path / "o"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    code, _, err = _run(["--plan", str(plan_file), "--out", str(out)], capsys)
    _one_line(code, err, "--out", "--force")
    assert [p.name for p in out.iterdir()] == ["keep.txt"]


def test_recipe_search_refuses_a_plan_without_structure(tmp_path, capsys):
    plan_file = tmp_path / "int8.json"
    plan_file.write_text(CompressionPlan.from_json(pruned_int8_plan().to_json())
                         .model_copy(update={"groups": ()}).to_json())
    code, _, err = _run(["--plan", str(plan_file), "--out", str(tmp_path / "o"), "--manifest",
                         str(CALIB)], capsys)
    _one_line(code, err, "removes no structure")
    assert not (tmp_path / "o").exists()


def test_cli_objectives_are_the_search_objectives():
    from workbench.search.recipe import OBJECTIVES
    from workbench.search.recipe_cli import OBJECTIVES as CLI
    assert CLI == OBJECTIVES
