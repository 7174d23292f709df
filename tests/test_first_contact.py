"""First contact: what a new user runs first works as root and as a normal user.

The Makefile logic is checked with `make -n` (prints the commands, runs nothing), with USER_ID
forced to root (0) and to a normal user (1000); one slow test starts the real `make lab` (as
whoever runs the suite: root in CI) and fetches the URL it prints.
"""
from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
VENV = Path(sys.executable).resolve().parents[1]   # an existing venv: `setup` has nothing to do

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")


def _dry(target: str, *assignments: str) -> str:
    out = subprocess.run(["make", "-n", "-C", str(REPO), target, f"VENV={VENV}",
                          "STAMP=/dev/null", *assignments],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout


def _line(text: str, word: str) -> str:
    joined = text.replace("\\\n", " ")
    lines = [ln for ln in joined.splitlines() if word in ln]
    assert lines, f"no `{word}` command in:\n{text}"
    return lines[-1]


def test_make_lab_passes_allow_root_as_root() -> None:
    assert "--allow-root" in _line(_dry("lab", "USER_ID=0"), "jupyter lab")


def test_make_lab_does_not_pass_allow_root_as_a_normal_user() -> None:
    assert "--allow-root" not in _line(_dry("lab", "USER_ID=1000"), "jupyter lab")


def test_make_lab_follows_the_real_uid() -> None:
    line = _line(_dry("lab"), "jupyter lab")
    assert ("--allow-root" in line) == (os.geteuid() == 0)


def test_make_serve_uses_a_token_and_hides_tracebacks_by_default() -> None:
    line = _line(_dry("serve"), "voila")
    assert "--token" in line.split()
    assert "--show_tracebacks=False" in line and "--show_tracebacks=True" not in line


def test_make_serve_shows_tracebacks_only_when_asked() -> None:
    assert "--show_tracebacks=True" in _line(_dry("serve", "TRACEBACKS=1"), "voila")


def test_make_serve_never_allows_root_flag_it_does_not_need() -> None:
    # Voila has no root check; the flag would be rejected as unknown.
    assert "--allow-root" not in _line(_dry("serve", "USER_ID=0"), "voila")


def test_workbench_lab_passes_allow_root_only_as_root(monkeypatch) -> None:
    import workbench.__main__ as cli

    calls: list[list[str]] = []
    monkeypatch.setattr(cli.subprocess, "call", lambda cmd: calls.append(cmd) or 0)
    for uid, expected in ((0, True), (1000, False)):
        monkeypatch.setattr(os, "geteuid", lambda uid=uid: uid)
        assert cli.main(["lab", "--port", "8899"]) == 0
        assert ("--allow-root" in calls[-1]) == expected


def _no_system(monkeypatch, module) -> list:
    """Run as root with apt-get on PATH but no synthesizer / prompts; record subprocess calls."""
    calls: list = []
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    real_which = shutil.which
    monkeypatch.setattr(shutil, "which",
                        lambda name, *a, **k: "/usr/bin/apt-get" if name == "apt-get" else
                        None if name in ("espeak-ng", "flite", "text2wave") else real_which(name))
    monkeypatch.setattr(subprocess, "run", lambda cmd, *a, **k: calls.append(cmd))
    return calls


def test_data_build_never_runs_apt_get_by_itself_for_synthesizers(monkeypatch) -> None:
    from workbench.data import synth
    from workbench.errors import DataError

    calls = _no_system(monkeypatch, synth)
    with pytest.raises(DataError, match="espeak-ng.*make apt"):
        synth.require_engines()
    assert calls == []


def test_data_build_never_runs_apt_get_by_itself_for_real_prompts(monkeypatch, tmp_path) -> None:
    from workbench.data import asterisk, build
    from workbench.errors import DataError

    calls = _no_system(monkeypatch, build)
    monkeypatch.setattr(asterisk, "SOUNDS_DIR", tmp_path / "absent")
    with pytest.raises(DataError, match="--install-system-packages"):
        build.build_real(tmp_path / "real", progress=False)
    assert calls == []


def test_apt_get_runs_only_with_the_explicit_flag(monkeypatch) -> None:
    from workbench.data import synth
    from workbench.errors import DataError

    calls = _no_system(monkeypatch, synth)
    with pytest.raises(DataError):   # the fake apt-get installs nothing
        synth.require_engines(install_system_packages=True)
    assert calls and calls[0][:3] == ["apt-get", "install", "-y"]


def test_data_build_cli_has_the_explicit_flag() -> None:
    from workbench.__main__ import build_parser

    args = build_parser().parse_args(["data", "build", "--install-system-packages"])
    assert args.install_system_packages is True
    assert build_parser().parse_args(["data", "build"]).install_system_packages is False


@pytest.mark.slow
def test_make_lab_prints_a_url_that_answers(tmp_path) -> None:
    """The README's first command, for real: `make lab` (setup skipped with `-o setup`: the venv
    running this test exists) prints a URL with its token, and that URL answers HTTP 200.
    Jupyter's config, runtime and workspace folders are isolated in tmp_path."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "BROWSER": "true",   # nothing to open a browser with
           **{k: str(tmp_path / k.lower()) for k in (
               "JUPYTER_CONFIG_DIR", "JUPYTER_RUNTIME_DIR", "JUPYTER_DATA_DIR",
               "JUPYTERLAB_SETTINGS_DIR", "JUPYTERLAB_WORKSPACES_DIR")}}
    log = tmp_path / "lab.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(["make", "-C", str(REPO), "-o", "setup", "lab", f"VENV={sys.prefix}",
                                 f"PORT={port}"], stdout=out, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)
    try:
        url = None
        deadline = time.monotonic() + 600   # a hang guard, not a budget
        while url is None and time.monotonic() < deadline and proc.poll() is None:
            found = re.search(rf"http://127\.0\.0\.1:{port}/lab\?token=[0-9a-f]+", log.read_text())
            url = found.group(0) if found else None
            time.sleep(0.5)
        assert url, f"make lab printed no URL (exit {proc.poll()}):\n{log.read_text()[-3000:]}"
        with urllib.request.urlopen(url, timeout=120) as reply:
            assert reply.status == 200
            assert b"JupyterLab" in reply.read()
        assert "Running as root is not recommended" not in log.read_text()
    finally:
        _stop_group(proc)


def _stop_group(proc: subprocess.Popen) -> None:
    """SIGTERM to the process group of `make` (jupyter included), then SIGKILL if it lingers."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(timeout=30)
            break
        except subprocess.TimeoutExpired:
            continue
