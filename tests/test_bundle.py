"""`workbench bundle` on a tiny model: primary + smaller fallback exported and verified, the
runtime selector (memory, warm-up latency, corrupt bundles), and bad inputs."""
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from workbench.__main__ import main
from workbench.compress import presets
from workbench.deploy.bundle import Budget, BundleInputError, build_bundle
from workbench.deploy.selector import BundleError, NoVariantFits, read_manifest, select
from workbench.export import ApplyOptions
from workbench.models import conformer_ctc
from workbench.paths import REAL_TEST

OPTIONS = ApplyOptions(eval_manifests=(REAL_TEST,), eval_limit=2, parity_utterances=1,
                       latency_repeats=2, threads=(1,), simulate_devices=False)
ROOMY = Budget(memory_mb=1000, latency_ms=1e5, device="rpi5", seconds=1.0)


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return conformer_ctc("tiny", n_layers=1).eval()


@pytest.fixture(scope="module")
def bundle(tiny, tmp_path_factory):
    out = tmp_path_factory.mktemp("bundle") / "b"
    manifest = build_bundle(tiny, out, ROOMY, presets.int8_everywhere(),
                            presets.int4_everywhere(), options=OPTIONS, log=lambda m: None)
    return out, manifest


def copy_bundle(bundle, tmp_path):
    target = tmp_path / "copy"
    shutil.copytree(bundle[0], target)
    return target


def test_bundle_holds_two_verified_exports_and_the_selector(bundle):
    out, manifest = bundle
    assert json.loads((out / "bundle.json").read_text()) == manifest
    assert (out / "select_runtime.py").is_file()
    primary, fallback = manifest["variants"]
    assert (primary["name"], fallback["name"]) == ("primary", "fallback")
    assert fallback["bytes"] < primary["bytes"]                       # smaller, as exported
    assert fallback["simulated"]["size_bytes"] < primary["simulated"]["size_bytes"]
    for v in (primary, fallback):
        assert (out / v["model"]).stat().st_size == v["bytes"]
        report = json.loads((out / v["report"]).read_text())
        assert [r["set"] for r in v["accuracy"]] == [r["set"] for r in report["accuracy"]]
        for a in v["accuracy"]:
            assert a["abs_diff"] == pytest.approx(abs(a["wer_ort"] - a["wer_sim"]), abs=1e-4)
        assert v["memory_bytes"] > 0 and v["simulated"]["meets_latency"]
    assert read_manifest(out) == manifest


def test_selector_picks_the_primary_when_everything_fits(bundle):
    choice = select(bundle[0], available_bytes=10**12, latency_budget_ms=1e6)
    assert choice.name == "primary" and choice.skipped == [] and choice.warmup_ms > 0
    log_probs, lengths = choice.session.run(None, {"features": np.zeros((1, 80, 100), np.float32),
                                                   "feat_lengths": np.array([100])})
    assert log_probs.ndim == 3 and log_probs.shape[0] == 1 and int(lengths[0]) > 0


def test_selector_falls_back_when_memory_is_short(bundle):
    primary, fallback = bundle[1]["variants"]
    avail = primary["memory_bytes"] - 1
    if fallback["memory_bytes"] <= avail:
        choice = select(bundle[0], available_bytes=avail, latency_budget_ms=1e6)
        assert choice.name == "fallback"
        assert len(choice.skipped) == 1 and "primary: needs" in choice.skipped[0]
    else:   # measured memory of the two tiny exports is within a page or two: both skipped
        with pytest.raises(NoVariantFits, match="primary: needs"):
            select(bundle[0], available_bytes=avail, latency_budget_ms=1e6)
    with pytest.raises(NoVariantFits) as err:
        select(bundle[0], available_bytes=1, latency_budget_ms=1e6)
    assert len(err.value.reasons) == 2 and all("needs" in r for r in err.value.reasons)


def test_selector_refuses_when_no_variant_meets_the_latency_budget(bundle):
    with pytest.raises(NoVariantFits) as err:       # 1 ns: no run is that fast
        select(bundle[0], available_bytes=10**12, latency_budget_ms=1e-6)
    assert [r.split(":")[0] for r in err.value.reasons] == ["primary", "fallback"]
    assert all("warm-up" in r and "budget" in r for r in err.value.reasons)


def test_selector_skips_a_corrupt_model_file(bundle, tmp_path):
    folder = copy_bundle(bundle, tmp_path)
    model = folder / "primary" / "model.onnx"
    data = bytearray(model.read_bytes())
    data[-1] ^= 0xFF                                  # same size, different bytes
    model.write_bytes(bytes(data))
    choice = select(folder, available_bytes=10**12, latency_budget_ms=1e6)
    assert choice.name == "fallback" and "sha256" in choice.skipped[0]


@pytest.mark.parametrize("damage, message", [
    ("no_folder", "not a folder"),
    ("no_manifest", "bundle.json: missing"),
    ("not_json", "not valid JSON"),
    ("other_format", "format"),
    ("no_variants", "non-empty list"),
    ("variant_fields", "needs name, model"),
    ("bad_memory", "memory_bytes"),
    ("missing_model", "is missing"),
    ("truncated_model", "incomplete copy"),
])
def test_selector_refuses_a_damaged_bundle(bundle, tmp_path, damage, message):
    folder = copy_bundle(bundle, tmp_path)
    manifest_path = folder / "bundle.json"
    manifest = json.loads(manifest_path.read_text())
    if damage == "no_folder":
        folder = tmp_path / "nothing-here"
    elif damage == "no_manifest":
        manifest_path.unlink()
    elif damage == "not_json":
        manifest_path.write_text("{ not json")
    elif damage == "other_format":
        manifest_path.write_text(json.dumps({**manifest, "format": "something/9"}))
    elif damage == "no_variants":
        manifest_path.write_text(json.dumps({**manifest, "variants": []}))
    elif damage == "variant_fields":
        manifest["variants"][0].pop("sha256")
        manifest_path.write_text(json.dumps(manifest))
    elif damage == "bad_memory":
        manifest["variants"][1]["memory_bytes"] = -5
        manifest_path.write_text(json.dumps(manifest))
    elif damage == "missing_model":
        (folder / "fallback" / "model.onnx").unlink()
    elif damage == "truncated_model":
        model = folder / "primary" / "model.onnx"
        model.write_bytes(model.read_bytes()[:100])
    with pytest.raises(BundleError, match=message):
        select(folder, available_bytes=10**12, latency_budget_ms=1e6)


@pytest.mark.parametrize("kwargs, message", [
    ({"latency_budget_ms": -1.0}, "latency_budget_ms"),
    ({"latency_budget_ms": float("nan")}, "latency_budget_ms"),
    ({"available_bytes": 0}, "available_bytes"),
    ({"runs": 0}, "runs"),
    ({"threads": 0}, "threads"),
])
def test_selector_refuses_bad_arguments(bundle, kwargs, message):
    args = {"available_bytes": 10**12, "latency_budget_ms": 1e6, **kwargs}
    with pytest.raises(BundleError, match=message):
        select(bundle[0], **args)


def test_shipped_selector_runs_standalone_without_workbench_or_torch(bundle, tmp_path):
    folder = copy_bundle(bundle, tmp_path)
    code = ("import sys, runpy; ns = runpy.run_path('select_runtime.py', run_name='x'); "
            "rc = ns['main']([sys.argv[1], '--latency-ms', '1e6']); "
            "print('torch' in sys.modules, 'workbench' in sys.modules, rc)")
    run = subprocess.run([sys.executable, "-I", "-c", code, str(folder)], cwd=folder,
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    result, flags = run.stdout.strip().splitlines()
    assert json.loads(result)["selected"] == "primary"
    assert flags == "False False 0"
    run = subprocess.run([sys.executable, "-I", "select_runtime.py", str(folder),
                          "--available-mb", "0.001"], cwd=folder, capture_output=True, text=True)
    assert run.returncode == 1 and "no variant of the bundle fits" in json.loads(
        run.stdout)["error"]


def test_a_fallback_that_is_not_smaller_is_refused_before_export(tiny, tmp_path):
    with pytest.raises(BundleInputError, match="not smaller than the primary"):
        build_bundle(tiny, tmp_path / "b", ROOMY, presets.int8_everywhere(),
                     presets.int8_everywhere(), options=OPTIONS, log=lambda m: None)
    assert not (tmp_path / "b").exists()


def test_a_fallback_over_the_simulated_budget_is_refused(tiny, tmp_path):
    tight = Budget(memory_mb=1000, latency_ms=1e-3, device="rpi5", seconds=1.0)
    with pytest.raises(BundleInputError, match="no safe fallback"):
        build_bundle(tiny, tmp_path / "b", tight, presets.int8_everywhere(),
                     presets.int4_everywhere(), options=OPTIONS, log=lambda m: None)
    assert not (tmp_path / "b").exists()


@pytest.mark.parametrize("budget, message", [
    (Budget(memory_mb=-1, latency_ms=100), "--memory-mb"),
    (Budget(memory_mb=100, latency_ms=float("inf")), "--latency-ms"),
    (Budget(memory_mb=100, latency_ms=100, seconds=0.0), "--seconds"),
    (Budget(memory_mb=100, latency_ms=100, threads=0), "--threads"),
    (Budget(memory_mb=100, latency_ms=100, device="rpi9"), "--device 'rpi9'"),
])
def test_bad_budgets_are_refused(budget, message):
    with pytest.raises(BundleInputError, match=message):
        budget.checked()


@pytest.mark.parametrize("args, message", [
    (["--memory-mb", "-3", "--latency-ms", "100"], "--memory-mb"),
    (["--memory-mb", "512", "--latency-ms", "abc"], "--latency-ms"),
    (["--memory-mb", "512", "--latency-ms", "100", "--device", "pentium"], "--device"),
    (["--memory-mb", "512", "--latency-ms", "100", "--fallback-plan", "/nope.json"],
     "--fallback-plan"),
])
def test_cli_refuses_bad_inputs_in_one_line(args, message, tmp_path, capsys):
    assert main(["bundle", *args, "--out", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err
    assert not (tmp_path / "b").exists()
