"""`workbench apply`: refusals (one line, exit 2), atomic output, and a full run on a tiny model."""
import json
import os

import pytest
import torch

from workbench.__main__ import main
from workbench.compress import presets
from workbench.errors import DataError, PlanError, WorkbenchError
from workbench.export import ApplyOptions, apply_plan, read_plan
from workbench.export.atomic import staged_dir, write_bytes_atomic
from workbench.export.errors import OutputExistsError
from workbench.models import conformer_ctc, save_checkpoint
from workbench.paths import REAL_TEST, SYNTH_TEST
from workbench.plan import CompressionPlan
from workbench.compress.resolution import plan_for_model


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return conformer_ctc("tiny", n_layers=1).eval()


@pytest.fixture()
def checkpoint(tiny, tmp_path):
    return save_checkpoint(tiny, tmp_path / "tiny.safetensors")


def run_cli(args, capsys):
    code = main(["apply", *map(str, args)])
    captured = capsys.readouterr()
    return code, captured.err.strip()


def test_plan_for_another_model_is_refused_with_the_fix(checkpoint, tmp_path, capsys):
    other = conformer_ctc("tiny", n_layers=1, d_model=32, n_heads=2)
    plan_path = tmp_path / "plan.json"
    plan_path.write_text(plan_for_model(presets.int8_everywhere(), other).to_json())
    code, err = run_cli(["--plan", plan_path, "--checkpoint", checkpoint, "--out",
                         tmp_path / "out"], capsys)
    assert code == 2 and len(err.splitlines()) == 1
    assert "this plan was made for model" in err and "re-create the plan" in err
    assert "--checkpoint" in err
    assert not (tmp_path / "out").exists()


def test_corrupt_plan_names_line_and_field(checkpoint, tmp_path, capsys):
    text = presets.int8_everywhere().to_json().replace('"weight_bits": 8', '"weight_bits": 9')
    plan_path = tmp_path / "plan.json"
    plan_path.write_text(text)
    line = next(i for i, row in enumerate(text.splitlines(), 1) if '"weight_bits": 9' in row)
    with pytest.raises(PlanError) as err:
        read_plan(plan_path)
    assert f"{plan_path}:{line}" in str(err.value) and "weight_bits" in str(err.value)
    code, msg = run_cli(["--plan", plan_path, "--checkpoint", checkpoint, "--out",
                         tmp_path / "out"], capsys)
    assert code == 2 and f"{plan_path}:{line}" in msg


def test_not_json_is_refused_with_its_line(tmp_path, capsys):
    plan_path = tmp_path / "plan.json"
    plan_path.write_text('{\n  "format_version": 1,\n  "layers": {,\n}\n')
    code, err = run_cli(["--plan", plan_path, "--out", tmp_path / "out"], capsys)
    assert code == 2 and f"{plan_path}:3:" in err


def test_existing_output_folder_needs_force(checkpoint, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    plan_path = tmp_path / "plan.json"
    plan_path.write_text(CompressionPlan().to_json())
    code, err = run_cli(["--plan", plan_path, "--checkpoint", checkpoint, "--out", out], capsys)
    assert code == 2 and "--force" in err
    assert (out / "keep.txt").read_text() == "mine"


def test_staged_folder_is_all_or_nothing(tmp_path):
    target = tmp_path / "export"
    with pytest.raises(RuntimeError):
        with staged_dir(target) as stage:
            write_bytes_atomic(stage / "model.onnx", b"x" * 1000)
            raise RuntimeError("interrupted midway")
    assert not target.exists()
    assert os.listdir(tmp_path) == []                       # no staging folder left behind


def test_atomic_file_write_leaves_no_temporary_on_failure(tmp_path):
    (tmp_path / "model.onnx").mkdir()                       # os.replace onto a folder fails
    with pytest.raises(OSError):
        write_bytes_atomic(tmp_path / "model.onnx", b"abc")
    assert sorted(os.listdir(tmp_path)) == ["model.onnx"]


def test_export_that_fails_midway_writes_nothing(tiny, tmp_path):
    out = tmp_path / "out"
    options = ApplyOptions(eval_manifests=(tmp_path / "missing" / "manifest.jsonl",),
                           latency_repeats=1, threads=(1,), simulate_devices=False)
    with pytest.raises(DataError):       # raised after model.onnx was written to the stage
        apply_plan(tiny, presets.int8_everywhere(), out, options)
    assert not out.exists() and os.listdir(tmp_path) == []


def test_apply_writes_verified_export(tiny, tmp_path):
    out = tmp_path / "out"
    options = ApplyOptions(eval_manifests=(REAL_TEST, SYNTH_TEST), eval_limit=3,
                           parity_utterances=2, latency_seconds=1.0, latency_repeats=3,
                           threads=(1,), model_name="tiny-test")
    report = apply_plan(tiny, plan_for_model(presets.int8_everywhere(), tiny), out, options)
    assert sorted(os.listdir(out)) == ["MODEL_CARD.md", "model.onnx", "plan.json", "report.json"]
    assert json.loads((out / "report.json").read_text()) == report
    assert CompressionPlan.from_json((out / "plan.json").read_text()) == \
        plan_for_model(presets.int8_everywhere(), tiny)
    assert report["files"]["model.onnx"]["bytes"] == (out / "model.onnx").stat().st_size
    assert [row["set"] for row in report["accuracy"]] == ["real_test", "synth_test"]
    assert all(row["utterances"] == 3 for row in report["accuracy"])
    assert report["accuracy_all_sets"]["utterances"] == 6
    assert 0.0 <= report["parity"]["argmax_agreement"] <= 1.0 and report["parity"]["frames"] > 0
    assert report["ops"]["file_quantized"]["MatMulInteger"] > 0
    assert report["latency_ms"]["threads_1"]["model_ms"] > 0
    # A tiny model's file is mostly graph (names, shapes); its tensor data is what size() prices.
    assert report["size"]["tensor_pred_error_pct"] < 5
    assert report["parity"]["fp32_export_max_abs_diff_log_probs"] < 1e-4
    assert report["versions"]["onnxruntime"]
    card = (out / "MODEL_CARD.md").read_text()
    assert card.startswith("---\nlicense: mit\n") and "model-index:" in card
    assert card.count("---\n") >= 2 and "## Known failure modes and limits" in card
    assert "CC-BY-SA-3.0" in card and "| layer |" in card
    # int8 weight storage: auto follows this CPU's probe, and report + card say which and why
    from workbench.onnx_tools.quantize import u8s8_is_exact
    int8 = report["int8_weights"]
    assert int8["requested"] == "auto" and int8["u8s8_exact_on_this_cpu"] == u8s8_is_exact()
    assert int8["storage"] == ("signed" if u8s8_is_exact() else "unsigned")
    assert int8["reason"] in card and "**int8 weight storage**" in card
    if int8["storage"] == "signed":
        assert "--int8-weights unsigned" in int8["warning"] and int8["warning"] in card
    else:
        assert "warning" not in int8


def test_bad_int8_weights_is_one_line(checkpoint, tiny, tmp_path, capsys):
    plan_path = tmp_path / "plan.json"
    plan_path.write_text(CompressionPlan().to_json())
    code, err = run_cli(["--plan", plan_path, "--checkpoint", checkpoint, "--out",
                         tmp_path / "out", "--int8-weights", "unsinged"], capsys)
    assert code == 2 and err.count("\n") == 0 and "--int8-weights" in err
    assert "did you mean 'unsigned'?" in err
    with pytest.raises(WorkbenchError) as bad:
        apply_plan(tiny, presets.int8_everywhere(), tmp_path / "out",
                   ApplyOptions(int8_weights="int8"))
    assert "\n" not in str(bad.value) and "auto, signed, unsigned" in str(bad.value)
    assert not (tmp_path / "out").exists()


def test_workbench_errors_are_one_line(tmp_path, capsys):
    code, err = run_cli(["--plan", tmp_path / "nope.json", "--out", tmp_path / "o"], capsys)
    assert code == 2 and err.count("\n") == 0 and "no such plan file" in err
    assert issubclass(OutputExistsError, WorkbenchError)
