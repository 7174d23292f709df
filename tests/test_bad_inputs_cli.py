"""Bad command-line arguments: one case per distinct bad input.

Each case runs `workbench.__main__.main` in-process and asserts: exit status 2, exactly one line on
stderr, no traceback, and that the line names the option and the value given. Nothing here loads a
model: every refusal happens before any work (that is part of what is tested).
"""
from __future__ import annotations

import errno
import importlib
import os
import signal
import socket
import sys
import tempfile
from pathlib import Path

import pytest

from workbench.__main__ import main

PLAN = '{"version": 1, "layers": {}}\n'


@pytest.fixture
def files(tmp_path: Path) -> dict[str, str]:
    plan = tmp_path / "plan.json"
    plan.write_text(PLAN)
    a_file = tmp_path / "a_file.txt"
    a_file.write_text("not a folder\n")
    full = tmp_path / "full"
    full.mkdir()
    (full / "old.txt").write_text("keep me\n")
    return {"plan": str(plan), "file": str(a_file), "dir": str(tmp_path), "full": str(full),
            "missing": str(tmp_path / "missing.json"), "tmp": str(tmp_path)}


def run(capsys, argv: list[str]) -> tuple[int, str]:
    handler = signal.getsignal(signal.SIGTERM)   # main() installs its own; give pytest its back
    try:
        code = main(argv)
    except SystemExit as exit_:
        code = exit_.code
    finally:
        signal.signal(signal.SIGTERM, handler)
    return code, capsys.readouterr().err


def assert_one_line_error(code: int, err: str, *names: str) -> None:
    assert code == 2, f"exit status {code}, stderr: {err!r}"
    assert "Traceback" not in err, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, f"expected one line, got: {err!r}"
    assert "error" in lines[0]
    for name in names:
        assert name in lines[0], f"{name!r} not named in: {lines[0]}"


# ---- numbers out of range or not numbers --------------------------------------------------------
# (argv with {plan}/{tmp} placeholders, the names the line must contain)
NUMBERS = {
    "eval-threads-zero": (["eval", "--threads", "0"], ["--threads", "0"]),
    "eval-threads-negative": (["eval", "--threads", "-4"], ["--threads", "-4"]),
    "eval-threads-fraction": (["eval", "--threads", "1.5"], ["--threads", "1.5"]),
    "eval-threads-word": (["eval", "--threads", "two"], ["--threads", "two"]),
    "eval-threads-huge": (["eval", "--threads", "100000"], ["--threads", "100000"]),
    "eval-threads-empty": (["eval", "--threads", ""], ["--threads"]),
    "eval-limit-zero": (["eval", "--limit", "0"], ["--limit", "0"]),
    "eval-limit-negative": (["eval", "--limit", "-1"], ["--limit", "-1"]),
    "eval-limit-word": (["eval", "--limit", "all"], ["--limit", "all"]),
    "eval-limit-fraction": (["eval", "--limit", "2.5"], ["--limit", "2.5"]),
    "recover-steps-zero": (["recover", "--plan", "{plan}", "--out", "{tmp}/o", "--steps", "0"],
                           ["--steps", "0"]),
    "recover-steps-negative": (["recover", "--plan", "{plan}", "--out", "{tmp}/o", "--steps",
                                "-5"], ["--steps", "-5"]),
    "recover-steps-word": (["recover", "--plan", "{plan}", "--out", "{tmp}/o", "--steps", "many"],
                           ["--steps", "many"]),
    "recover-minutes-negative": (["recover", "--plan", "{plan}", "--out", "{tmp}/o", "--minutes",
                                  "-1"], ["--minutes", "-1"]),
    "recover-minutes-zero": (["recover", "--plan", "{plan}", "--out", "{tmp}/o", "--minutes",
                              "0"], ["--minutes", "0"]),
    "recover-minutes-nan": (["recover", "--plan", "{plan}", "--out", "{tmp}/o", "--minutes",
                             "nan"], ["--minutes", "nan"]),
    "recover-minutes-inf": (["recover", "--plan", "{plan}", "--out", "{tmp}/o", "--minutes",
                             "inf"], ["--minutes", "inf"]),
    "recover-minutes-minus-inf": (["recover", "--plan", "{plan}", "--out", "{tmp}/o",
                                   "--minutes=-inf"], ["--minutes", "-inf"]),
    "recover-minutes-huge": (["recover", "--plan", "{plan}", "--out", "{tmp}/o", "--minutes",
                              "1e9"], ["--minutes", "1e+09"]),
    "recover-minutes-word": (["recover", "--plan", "{plan}", "--out", "{tmp}/o", "--minutes",
                              "ten"], ["--minutes", "ten"]),
    "recover-threads-zero": (["recover", "--plan", "{plan}", "--out", "{tmp}/o", "--threads",
                              "0"], ["--threads", "0"]),
    "train-minutes-negative": (["train", "--minutes", "-3"], ["--minutes", "-3"]),
    "train-minutes-nan": (["train", "--minutes", "NaN"], ["--minutes", "NaN"]),
    "train-seed-negative": (["train", "--seed", "-1"], ["--seed", "-1"]),
    "data-seed-too-big": (["data", "build", "--seed", str(2**32)], ["--seed", str(2**32)]),
    "data-seed-word": (["data", "build", "--seed", "random"], ["--seed", "random"]),
    "data-seed-fraction": (["data", "build", "--seed", "0.5"], ["--seed", "0.5"]),
    "data-n-train-zero": (["data", "build", "--n-train", "0"], ["--n-train", "0"]),
    "data-n-train-negative": (["data", "build", "--n-train", "-10"], ["--n-train", "-10"]),
    "bench-n-plans-zero": (["bench", "latency", "--n-plans", "0"], ["--n-plans", "0"]),
    "bench-changes-negative": (["bench", "interactive", "--changes", "-1"], ["--changes", "-1"]),
    "bench-seed-negative": (["bench", "interactive", "--seed", "-7"], ["--seed", "-7"]),
    "lab-port-zero": (["lab", "--port", "0"], ["--port", "0"]),
    "lab-port-negative": (["lab", "--port", "-1"], ["--port", "-1"]),
    "lab-port-too-big": (["lab", "--port", "70000"], ["--port", "70000"]),
    "lab-port-word": (["lab", "--port", "http"], ["--port", "http"]),
    "lab-port-fraction": (["lab", "--port", "8888.5"], ["--port", "8888.5"]),
    "bench-lessons-budget-nan": (["bench", "lessons", "--budget", "nan"], ["--budget", "nan"]),
    "bench-lessons-budget-zero": (["bench", "lessons", "--budget", "0"], ["--budget", "0"]),
    "bench-lessons-budget-negative": (["bench", "lessons", "--budget", "-5"], ["--budget", "-5"]),
    # `latency --bits 0` used to be taken as "no --bits" and print the fp32 latency (exit 0)
    "latency-bits-zero": (["latency", "--device", "rpi5", "--bits", "0"], ["--bits", "0"]),
    "latency-bits-unsupported": (["latency", "--device", "rpi5", "--bits", "33"], ["--bits", "33"]),
    "latency-bits-word": (["latency", "--device", "rpi5", "--bits", "int8"], ["--bits", "int8"]),
    "latency-threads-zero": (["latency", "--device", "rpi5", "--threads", "0"],
                             ["--threads", "0"]),
    # `sweep --bits 0` used to start the sweep (minutes of model runs) instead of refusing
    "sweep-bits-zero": (["sweep", "--bits", "0"], ["--bits", "0"]),
    "sweep-bits-unsupported": (["sweep", "--bits", "8,9"], ["--bits", "9"]),
    "search-bits-zero": (["search", "--bits", "0,4", "--out", "{tmp}/s"], ["--bits", "0"]),
    "bench-blocks-not-a-number": (["bench", "recover", "--case", "e_linear", "--blocks", "1,x"],
                                  ["--blocks", "1,x"]),
    "bench-blocks-empty-index": (["bench", "recover", "--case", "e_linear", "--blocks", "1,,2"],
                                 ["--blocks", "1,,2"]),
    "bench-blocks-negative": (["bench", "recover", "--case", "e_linear", "--blocks", "-1"],
                              ["--blocks", "-1"]),
    "bench-blocks-repeated": (["bench", "recover", "--case", "e_linear", "--blocks", "2,2"],
                              ["--blocks", "2,2"]),
    # a block set for a case that takes none: refused, not ignored (before the demo is loaded)
    "bench-blocks-without-e-linear": (["bench", "recover", "--case", "d_windowed", "--blocks", "1"],
                                      ["--blocks", "1", "e_linear"]),
}


def _fill(argv: list[str], files: dict[str, str]) -> list[str]:
    return [a.format(**files) for a in argv]


@pytest.mark.parametrize("case", sorted(NUMBERS))
def test_bad_number_is_refused_in_one_line(case: str, files, capsys) -> None:
    argv, names = NUMBERS[case]
    code, err = run(capsys, _fill(argv, files))
    assert_one_line_error(code, err, *names)


# ---- names: commands, choices, presets, notebooks, devices -------------------------------------

NAMES = {
    "unknown-command": (["evaluate"], ["evaluate"], None),
    "unknown-option": (["eval", "--threds", "2"], ["--threds"], None),
    "bench-typo": (["bench", "lesons"], ["lesons"], "lessons"),
    "decoder-typo": (["eval", "--decoder", "lexcon"], ["--decoder", "lexcon"], "lexicon"),
    "preset-typo": (["train", "--preset", "smal"], ["--preset", "smal"], "small"),
    "preset-unknown": (["train", "--preset", "enormous"], ["--preset", "enormous"], None),
    "lessons-only-typo": (["bench", "lessons", "--only", "03_quantizaton"],
                          ["--only", "03_quantizaton"], "03_quantization"),
    "lessons-only-ambiguous": (["bench", "lessons", "--only", "0"], ["--only", "0", "ambiguous"],
                               None),
    "apply-missing-plan-option": (["apply", "--out", "{tmp}/o"], ["--plan"], None),
    "data-unknown-action": (["data", "destroy"], ["destroy"], None),
}


@pytest.mark.parametrize("case", sorted(NAMES))
def test_bad_name_is_refused_in_one_line(case: str, files, capsys) -> None:
    argv, names, suggestion = NAMES[case]
    code, err = run(capsys, _fill(argv, files))
    assert_one_line_error(code, err, *names)
    if suggestion:
        assert f"did you mean '{suggestion}'" in err


def test_unknown_device_suggests_the_closest_name() -> None:
    from workbench.errors import DeviceError
    from workbench.latency.devices import load_device

    with pytest.raises(DeviceError, match=r"'rpi55'.*did you mean 'rpi5'"):
        load_device("rpi55")


def test_unknown_device_far_from_any_name_lists_the_known_ones() -> None:
    from workbench.errors import DeviceError
    from workbench.latency.devices import load_device

    with pytest.raises(DeviceError, match=r"'mainframe'.*known devices: .*rpi4") as info:
        load_device("mainframe")
    assert "did you mean" not in str(info.value)


# ---- files that are missing, folders given as files --------------------------------------------

FILES = {
    "eval-checkpoint-missing": (["eval", "--checkpoint", "{missing}"], ["--checkpoint",
                                                                        "missing.json"]),
    "eval-checkpoint-folder": (["eval", "--checkpoint", "{dir}"], ["--checkpoint", "folder"]),
    "eval-checkpoint-empty-path": (["eval", "--checkpoint", ""], ["--checkpoint", "empty"]),
    "eval-manifest-missing": (["eval", "--manifest", "{missing}"], ["--manifest", "missing.json"]),
    "eval-manifest-folder": (["eval", "--manifest", "{dir}"], ["--manifest", "folder"]),
    "apply-plan-missing": (["apply", "--plan", "{missing}", "--out", "{tmp}/o"],
                           ["--plan", "missing.json"]),
    "apply-plan-folder": (["apply", "--plan", "{dir}", "--out", "{tmp}/o"], ["--plan", "folder"]),
    "apply-checkpoint-missing": (["apply", "--plan", "{plan}", "--checkpoint", "{missing}",
                                  "--out", "{tmp}/o"], ["--checkpoint", "missing.json"]),
    "apply-checkpoint-folder": (["apply", "--plan", "{plan}", "--checkpoint", "{dir}",
                                 "--out", "{tmp}/o"], ["--checkpoint", "folder"]),
    "recover-plan-missing": (["recover", "--plan", "{missing}", "--out", "{tmp}/o"],
                             ["--plan", "missing.json"]),
    "recover-checkpoint-folder": (["recover", "--plan", "{plan}", "--checkpoint", "{dir}",
                                   "--out", "{tmp}/o"], ["--checkpoint", "folder"]),
    "recover-manifest-missing": (["recover", "--plan", "{plan}", "--manifest", "{missing}",
                                  "--out", "{tmp}/o"], ["--manifest", "missing.json"]),
    "latency-plan-missing": (["latency", "--device", "rpi5", "--plan", "{missing}"],
                             ["--plan", "missing.json"]),
    "latency-plan-folder": (["latency", "--device", "rpi5", "--plan", "{dir}"],
                            ["--plan", "folder"]),
    "latency-device-file-missing": (["latency", "--device-file", "{missing}"],
                                    ["--device-file", "missing.json"]),
    "eval-checkpoint-special-file": (["eval", "--checkpoint", "/dev/null"],
                                     ["--checkpoint", "/dev/null", "regular file"]),
}


@pytest.mark.parametrize("case", sorted(FILES))
def test_bad_input_file_is_refused_in_one_line(case: str, files, capsys) -> None:
    argv, names = FILES[case]
    code, err = run(capsys, _fill(argv, files))
    assert_one_line_error(code, err, *names)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their permission bits")
def test_unreadable_checkpoint_is_refused(files, capsys, tmp_path) -> None:
    ckpt = tmp_path / "locked.safetensors"
    ckpt.write_bytes(b"x")
    ckpt.chmod(0)
    code, err = run(capsys, ["eval", "--checkpoint", str(ckpt)])
    assert_one_line_error(code, err, "--checkpoint", "not readable")


# ---- output folders: refused before any work, nothing left behind ---------------------------------

def _entries(folder: str | Path) -> list[str]:
    return sorted(p.name for p in Path(folder).iterdir())


OUTPUTS = {
    "apply-out-is-a-file": (["apply", "--plan", "{plan}", "--out", "{file}"],
                            ["--out", "a_file.txt", "is a file"]),
    "apply-out-not-empty": (["apply", "--plan", "{plan}", "--out", "{full}"],
                            ["--out", "full", "--force"]),
    "apply-out-under-a-file": (["apply", "--plan", "{plan}", "--out", "{file}/sub"],
                               ["--out", "a_file.txt", "not a folder"]),
    "apply-out-under-proc": (["apply", "--plan", "{plan}", "--out", "/proc/workbench-out/x"],
                             ["--out", "/proc", "cannot write"]),
    "recover-out-is-a-file": (["recover", "--plan", "{plan}", "--out", "{file}"],
                              ["--out", "a_file.txt", "is a file"]),
    "recover-out-not-empty": (["recover", "--plan", "{plan}", "--out", "{full}"],
                              ["--out", "full", "--force"]),
    "recover-out-under-a-file": (["recover", "--plan", "{plan}", "--out", "{file}/deeper/x"],
                                 ["--out", "a_file.txt"]),
    "calibrate-out-is-a-folder": (["calibrate", "--out", "{dir}"], ["--out", "is a folder"]),
    "calibrate-out-under-a-file": (["calibrate", "--out", "{file}/host.json"],
                                   ["--out", "a_file.txt"]),
    "data-out-under-a-file": (["data", "build", "--out", "{file}/corpus"],
                              ["--out", "a_file.txt"]),
    "train-out-under-a-file": (["train", "--demo", "--out", "{file}/model"],
                               ["--out", "a_file.txt"]),
}


@pytest.mark.parametrize("case", sorted(OUTPUTS))
def test_bad_output_folder_is_refused_before_any_work(case: str, files, capsys) -> None:
    argv, names = OUTPUTS[case]
    before = _entries(files["tmp"])
    full_before = _entries(files["full"])
    code, err = run(capsys, _fill(argv, files))
    assert_one_line_error(code, err, *names)
    assert _entries(files["tmp"]) == before, "something was left next to the output"
    assert _entries(files["full"]) == full_before
    assert Path(files["file"]).read_text() == "not a folder\n"


def test_out_on_a_read_only_file_system_is_refused_before_the_export(files, capsys,
                                                                      monkeypatch) -> None:
    """Root ignores permission bits, so a read-only mount is simulated at the probe mkdir."""
    import workbench.cli_checks as ck

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    monkeypatch.setattr(ck.tempfile, "mkdtemp", read_only)
    out = Path(files["tmp"]) / "ro" / "export"
    code, err = run(capsys, ["apply", "--plan", files["plan"], "--out", str(out)])
    monkeypatch.undo()
    assert_one_line_error(code, err, "--out", "read-only")
    assert not (Path(files["tmp"]) / "ro").exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes whatever the permission bits say")
def test_out_under_a_read_only_parent_is_refused(files, capsys) -> None:
    parent = Path(files["tmp"]) / "locked"
    parent.mkdir()
    parent.chmod(0o555)
    try:
        code, err = run(capsys, ["apply", "--plan", files["plan"], "--out", str(parent / "x")])
    finally:
        parent.chmod(0o755)
    assert_one_line_error(code, err, "--out", "locked")
    assert _entries(parent) == []


def test_lab_port_in_use_is_refused(capsys) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(1)
        port = sock.getsockname()[1]
        code, err = run(capsys, ["lab", "--port", str(port)])
    assert_one_line_error(code, err, "--port", str(port))


# ---- eval: the checkpoint is checked before any feature is computed ------------------------------

def test_eval_checks_the_checkpoint_before_computing_features(files, capsys, monkeypatch) -> None:
    evaluate = importlib.import_module("workbench.evaluate")   # (the package has a function so named)

    bad = Path(files["tmp"]) / "garbage.safetensors"
    bad.write_bytes(b"\x00not a checkpoint" * 8)
    features_computed = []
    monkeypatch.setattr(evaluate, "load_eval_set",
                        lambda *a, **k: features_computed.append(a) or pytest.fail("features first"))
    code, err = run(capsys, ["eval", "--checkpoint", str(bad)])
    assert_one_line_error(code, err, "garbage.safetensors")
    assert features_computed == []


# ---- the error line starts on its own line after a progress bar ---------------------------------

def test_error_line_is_not_glued_to_a_progress_bar(capsys) -> None:

    from tqdm import tqdm

    from workbench.cli_checks import report_error
    from workbench.errors import DataError

    bar = tqdm(total=10, file=sys.stderr, desc="features")
    bar.update(3)
    try:
        code = report_error("eval", DataError("manifest.jsonl: line 3: field 'audio' missing"))
    finally:
        bar.close()
    err = capsys.readouterr().err
    assert code == 2
    line = next(ln for ln in err.splitlines() if "error:" in ln)
    assert line.startswith("workbench eval: error: manifest.jsonl: line 3")


def test_error_message_spread_over_lines_is_printed_as_one(capsys) -> None:
    from workbench.cli_checks import report_error
    from workbench.errors import PlanError

    assert report_error("apply", PlanError("plan.json: field 'rank'\n  must be an int")) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "field 'rank' must be an int" in err


def test_probe_folder_of_the_writability_check_is_removed(tmp_path) -> None:
    from workbench.cli_checks import check_writable_parent

    check_writable_parent(tmp_path / "new" / "deeper" / "out")
    assert _entries(tmp_path) == []
    assert not list(Path(tempfile.gettempdir()).glob(".out.probe.*"))


@pytest.mark.parametrize("storage", ["signed", "unsigned"])
def test_int8_weights_with_executorch_is_refused_not_ignored(capsys, files, storage) -> None:
    out = Path(files["tmp"]) / "pte"
    code, err = run(capsys, ["apply", "--runtime", "executorch", "--plan", files["plan"],
                             "--out", str(out), "--int8-weights", storage])
    assert_one_line_error(code, err, "--int8-weights", storage, "executorch")
    assert not out.exists()


# ---- held-out sets as training data (workbench.data.held_out) ------------------------------------
def _renamed_held_out(tmp: str, name: str) -> str:
    """A held-out manifest written elsewhere under another name (same utterances and audio)."""
    from workbench import paths
    from workbench.data import read_manifest, write_manifest
    src = paths.REAL_TEST if name == "real_test" else paths.SYNTH_TEST
    return str(write_manifest(read_manifest(src), Path(tmp) / "renamed" / "train.jsonl"))


HELD_OUT_CASES = {   # (argv before the manifest, the option), the manifest's form
    "recover-manifest": (["recover", "--plan", "{plan}", "--out", "{tmp}/o"], "--manifest"),
    "recover-val-manifest": (["recover", "--plan", "{plan}", "--out", "{tmp}/o"],
                             "--val-manifest"),
    "recipe-search-manifest": (["recipe-search", "--plan", "{plan}", "--out", "{tmp}/o"],
                               "--manifest"),
    "search-recover-manifest": (["search", "--out", "{tmp}/o", "--executor", "serial"],
                                "--recover-manifest"),
    "bench-recover-manifest": (["bench", "recover", "--case", "d_windowed"], "--manifest"),
    "bench-linear-blocks-manifest": (["bench", "linear-blocks"], "--manifest"),
}


@pytest.mark.parametrize("form", ["shipped", "renamed"])
@pytest.mark.parametrize("name", ["real_test", "synth_test"])
@pytest.mark.parametrize("case", HELD_OUT_CASES)
def test_held_out_set_as_training_data_is_refused(capsys, files, monkeypatch, case, name,
                                                  form) -> None:
    from workbench import models, paths

    def loaded(*args, **kwargs):
        pytest.fail("a model was loaded before the held-out check")
    monkeypatch.setattr(models, "load_demo", loaded)
    monkeypatch.setattr(models, "load_checkpoint", loaded)
    manifest = (str(paths.REAL_TEST if name == "real_test" else paths.SYNTH_TEST)
                if form == "shipped" else _renamed_held_out(files["tmp"], name))
    argv, option = HELD_OUT_CASES[case]
    code, err = run(capsys, [a.format(**files) for a in argv] + [option, manifest])
    assert_one_line_error(code, err, option, manifest, f"held-out set {name}")
    assert not (Path(files["tmp"]) / "o").exists()
