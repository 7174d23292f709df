"""Output folders under failure: real SIGINT / SIGTERM sent to a real `python -m workbench apply`,
and a failing final rename. After each, nothing partial and nothing hidden is left: not at the
target, not beside it, not in the temp folder.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from workbench import cli_checks as ck
from workbench.compress import presets
from workbench.errors import WorkbenchError
from workbench.export import atomic
from workbench.export.atomic import staged_dir, write_bytes_atomic
from workbench.models import conformer_ctc, save_checkpoint

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _sigint_as_in_a_terminal():
    """These tests send SIGINT to this process and expect KeyboardInterrupt. A test runner started
    in the background (`make test &`, some CI shells) inherits SIGINT ignored, and Python then
    leaves it ignored: give it Python's default handler for the test, and put back what was."""
    previous = signal.getsignal(signal.SIGINT)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def _entries(folder: Path) -> list[str]:
    return sorted(p.name for p in Path(folder).iterdir())


#: What third-party libraries keep in TMPDIR across runs (not our output): torch's compile cache
#: and a session-id marker file (timestamp + uuid) written by a library at import.
LIBRARY_CACHES = ("torchinductor_", ".ses")


def _scratch_left(tmpdir: Path) -> list[str]:
    return [n for n in _entries(tmpdir) if not n.startswith(LIBRARY_CACHES)]


# ---- staged_dir / write_bytes_atomic in-process -------------------------------------------------

def test_failure_inside_the_staged_folder_leaves_nothing(tmp_path: Path) -> None:
    target = tmp_path / "new" / "deeper" / "export"
    with pytest.raises(RuntimeError, match="boom"):
        with staged_dir(target) as stage:
            (stage / "model.onnx").write_bytes(b"half")
            raise RuntimeError("boom")
    assert _entries(tmp_path) == [], "staging folder or created parents left behind"


def test_keyboard_interrupt_inside_the_staged_folder_keeps_the_old_folder(tmp_path) -> None:
    target = tmp_path / "export"
    target.mkdir()
    (target / "model.onnx").write_bytes(b"old")
    with pytest.raises(KeyboardInterrupt):
        with staged_dir(target) as stage:
            (stage / "model.onnx").write_bytes(b"new, half")
            raise KeyboardInterrupt
    assert _entries(tmp_path) == ["export"]
    assert (target / "model.onnx").read_bytes() == b"old"


def _failing_final_rename(monkeypatch, stage_marker: str = ".staging.") -> None:
    real = os.replace

    def replace(src, dst, *a, **k):
        if stage_marker in str(src):
            raise OSError(18, "Invalid cross-device link")
        return real(src, dst, *a, **k)

    monkeypatch.setattr(atomic.os, "replace", replace)


def test_failed_final_rename_to_a_new_target_leaves_nothing(tmp_path, monkeypatch) -> None:
    _failing_final_rename(monkeypatch)
    target = tmp_path / "export"
    with pytest.raises(WorkbenchError, match=r"export.*could not move.*nothing was written"):
        with staged_dir(target) as stage:
            (stage / "model.onnx").write_bytes(b"complete")
    assert _entries(tmp_path) == []


def test_failed_final_rename_over_an_old_target_restores_it(tmp_path, monkeypatch) -> None:
    _failing_final_rename(monkeypatch)
    target = tmp_path / "export"
    target.mkdir()
    (target / "report.json").write_text("{}")
    with pytest.raises(WorkbenchError, match="could not move"):
        with staged_dir(target) as stage:
            (stage / "report.json").write_text('{"new": 1}')
    assert _entries(tmp_path) == ["export"], "old folder not restored, or hidden entries left"
    assert (target / "report.json").read_text() == "{}"


def test_output_parent_that_cannot_be_created_is_an_error_not_a_crash(tmp_path) -> None:
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    with pytest.raises(WorkbenchError, match="file.txt.*cannot create"):
        with staged_dir(blocker / "export"):
            pytest.fail("must not get here")
    assert _entries(tmp_path) == ["file.txt"]


def test_failed_atomic_file_write_leaves_no_temporary_file(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(atomic.os, "fsync", lambda fd: (_ for _ in ()).throw(OSError(5, "EIO")))
    with pytest.raises(OSError):
        write_bytes_atomic(tmp_path / "model.onnx", b"x" * 1000)
    assert _entries(tmp_path) == []


def test_atomic_file_write_keeps_the_old_file_on_failure(tmp_path, monkeypatch) -> None:
    (tmp_path / "report.json").write_text("old")
    monkeypatch.setattr(atomic.os, "fsync", lambda fd: (_ for _ in ()).throw(OSError(28, "ENOSPC")))
    with pytest.raises(OSError):
        write_bytes_atomic(tmp_path / "report.json", b"new")
    assert _entries(tmp_path) == ["report.json"]
    assert (tmp_path / "report.json").read_text() == "old"


def test_signals_held_defers_a_signal_until_the_body_is_done() -> None:
    """SIGINT sent to the process (from a busy helper thread too, as onnxruntime's pools are)
    inside `signals_held` does not cut the body short; it is raised right after it."""
    import threading

    stop = threading.Event()
    busy = threading.Thread(target=stop.wait, daemon=True)
    busy.start()
    steps = []
    try:
        with pytest.raises(KeyboardInterrupt):
            with atomic.signals_held():
                os.kill(os.getpid(), signal.SIGINT)
                for i in range(200):   # many bytecode boundaries where a handler would run
                    steps.append(i)
                    time.sleep(0.001)
            pytest.fail("the held SIGINT was dropped")
    finally:
        stop.set()
    assert len(steps) == 200
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler, "handler not restored"


def test_second_interrupt_during_cleanup_still_removes_the_staging_folder(tmp_path,
                                                                          monkeypatch) -> None:
    """Ctrl-C twice: the second arrives while the staging folder is being removed."""
    real_rmtree = atomic.shutil.rmtree
    removed = []

    def rmtree(path, *a, **k):
        os.kill(os.getpid(), signal.SIGINT)   # mid-cleanup
        time.sleep(0.01)
        real_rmtree(path, *a, **k)
        removed.append(Path(path).name)

    monkeypatch.setattr(atomic.shutil, "rmtree", rmtree)
    target = tmp_path / "export"
    with pytest.raises(KeyboardInterrupt):
        with staged_dir(target) as stage:
            for i in range(20):
                (stage / f"part{i}.bin").write_bytes(b"x" * 100)
            raise KeyboardInterrupt
    assert removed and removed[0].startswith(".export.staging.")
    assert _entries(tmp_path) == [], f"left behind: {_entries(tmp_path)}"


def test_interrupt_while_the_staging_folder_is_created_leaves_nothing(tmp_path,
                                                                      monkeypatch) -> None:
    """SIGINT right after the staging folder appears on disk (before its name is returned)."""
    real_mkdir = Path.mkdir

    def mkdir(self, *a, **k):
        real_mkdir(self, *a, **k)
        if ".staging." in self.name:
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(Path, "mkdir", mkdir)
    with pytest.raises(KeyboardInterrupt):
        with staged_dir(tmp_path / "export"):
            pytest.fail("the interrupt must stop the write before it starts")
    assert _entries(tmp_path) == [], f"left behind: {_entries(tmp_path)}"


# ---- real signals to a real `python -m workbench apply` ----------------------------------------

@pytest.fixture(scope="module")
def apply_inputs(tmp_path_factory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("apply_inputs")
    torch.manual_seed(0)
    model = conformer_ctc("tiny", n_layers=1).eval()
    ckpt = save_checkpoint(model, folder / "tiny.safetensors")
    plan = folder / "plan.json"
    plan.write_text(presets.int8_everywhere().to_json())
    return plan, Path(ckpt)


def _start_apply(plan: Path, ckpt: Path, out: Path, tmpdir: Path) -> subprocess.Popen:
    env = dict(os.environ, TMPDIR=str(tmpdir), PYTHONUNBUFFERED="1",
               PYTHONPATH=os.pathsep.join([str(REPO), *filter(None,
                                                               [os.environ.get("PYTHONPATH")])]))
    return subprocess.Popen([sys.executable, "-m", "workbench", "apply", "--plan", str(plan),
                             "--checkpoint", str(ckpt), "--out", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            start_new_session=True, preexec_fn=_foreground_signals)


def _foreground_signals() -> None:
    """As in a terminal: a test runner started in the background (`cmd &`) ignores SIGINT, and
    the child would inherit that; give it the default disposition."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _wait_for_staging(proc: subprocess.Popen, parent: Path, name: str,
                      limit_s: float = 900) -> bool:
    """Until a hidden staging folder for `name` exists (True) or the process ended (False).
    `limit_s` is a hang guard only."""
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline and proc.poll() is None:
        if any(p.name.startswith(f".{name}.staging.") for p in parent.iterdir()):
            return True
        time.sleep(0.005)
    return False


@pytest.mark.parametrize("sig, code, word", [
    (signal.SIGINT, 130, "interrupted"),
    (signal.SIGTERM, 143, "terminated")],
                         ids=["SIGINT", "SIGTERM"])
def test_signal_during_the_write_leaves_nothing(sig, code, word, apply_inputs, tmp_path) -> None:
    plan, ckpt = apply_inputs
    parent, tmpdir = tmp_path / "exports", tmp_path / "tmp"
    parent.mkdir()
    tmpdir.mkdir()
    out = parent / "export"
    proc = _start_apply(plan, ckpt, out, tmpdir)
    try:
        staged = _wait_for_staging(proc, parent, out.name)
        if not staged:
            pytest.fail(f"apply finished before its staging folder was seen: "
                        f"{proc.communicate()[1][-2000:]}")
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == code, err
    assert "Traceback" not in err, err
    last = [ln for ln in err.splitlines() if ln.strip()][-1]
    assert word in last and "removed" in last
    assert _entries(parent) == [], f"left behind: {_entries(parent)}"
    assert _scratch_left(tmpdir) == [], f"left in TMPDIR: {_entries(tmpdir)}"


def _wait_for_export_phase(proc: subprocess.Popen, limit_s: float = 900) -> bool:
    """Until the child has loaded the ONNX libraries (it is exporting: past its imports and the
    checkpoint, before any staging folder); False if it ended first. Linux /proc only."""
    maps = Path(f"/proc/{proc.pid}/maps")
    deadline = time.monotonic() + limit_s   # hang guard
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if "onnx" in maps.read_text():
                return True
        except OSError:
            return False
        time.sleep(0.01)
    return False


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="needs Linux /proc")
@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)],
                         ids=["SIGINT", "SIGTERM"])
def test_signal_during_the_export_leaves_nothing(sig, code, apply_inputs, tmp_path) -> None:
    """A signal while the model is exported (before the staging folder exists)."""
    plan, ckpt = apply_inputs
    parent, tmpdir = tmp_path / "exports", tmp_path / "tmp"
    parent.mkdir()
    tmpdir.mkdir()
    out = parent / "export"
    proc = _start_apply(plan, ckpt, out, tmpdir)
    try:
        if not _wait_for_export_phase(proc):
            pytest.fail(f"apply ended before exporting: {proc.communicate()[1][-2000:]}")
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == code, err
    assert "Traceback" not in err, err
    assert _entries(parent) == [], f"left behind: {_entries(parent)}"
    assert _scratch_left(tmpdir) == [], f"left in TMPDIR: {_entries(tmpdir)}"


def test_apply_to_an_existing_folder_without_force_changes_nothing(apply_inputs, tmp_path) -> None:
    plan, ckpt = apply_inputs
    out = tmp_path / "export"
    out.mkdir()
    (out / "model.onnx").write_bytes(b"previous export")
    proc = _start_apply(plan, ckpt, out, tmp_path)
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 2 and "--force" in err and "Traceback" not in err
    assert _entries(tmp_path) == ["export"] and _entries(out) == ["model.onnx"]
    assert (out / "model.onnx").read_bytes() == b"previous export"


# --- a signal while a native library is imported -------------------------------------------
# CI (stop 25) saw `workbench apply` abort with SIGABRT (-6, a C++ "terminate called" traceback)
# when SIGINT landed while torch.onnx.export imported onnx: a KeyboardInterrupt cannot cross
# nanobind's module initialisation. The exporter now holds signals over that import.

@pytest.mark.parametrize("sig, expected", [(signal.SIGINT, KeyboardInterrupt),
                                           (signal.SIGTERM, ck.Terminated)],
                         ids=["SIGINT", "SIGTERM"])
def test_a_held_signal_is_raised_after_the_block(sig, expected) -> None:
    previous = signal.getsignal(signal.SIGTERM)
    ck.install_signal_handlers()
    finished_inside = False
    try:
        with pytest.raises(expected):
            with ck.signals_held():
                os.kill(os.getpid(), sig)
                time.sleep(0.05)          # the handler has run by now (main thread)
                finished_inside = True    # ... and did not interrupt the block
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert finished_inside
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler   # handlers restored


def test_the_exporter_holds_signals_while_it_loads_onnx(monkeypatch) -> None:
    from workbench.onnx_tools import exporter

    loaded = []

    def load_with_a_ctrl_c() -> None:
        os.kill(os.getpid(), signal.SIGINT)   # as if Ctrl-C came during `import onnx`
        time.sleep(0.05)
        loaded.append(True)

    monkeypatch.setattr(exporter, "load_exporter", load_with_a_ctrl_c)
    with pytest.raises(KeyboardInterrupt):
        exporter.export_fp32(conformer_ctc("tiny", n_layers=1))
    assert loaded == [True]    # the interrupt came after the import finished, not inside it
