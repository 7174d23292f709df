"""Servers and a browser for the browser tests (recipe: ../shared/DESIGN.md section 8).

JupyterLab and Voila run on loopback with isolated config / runtime / settings / workspace
directories and a copy of the notebook in a temporary folder (so autosave never writes outputs
into the repository). Chromium is Debian's /usr/bin/chromium driven through Playwright's sync
API; `playwright install` is never run.
"""
from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
NOTEBOOK = REPO / "notebooks" / "00_workbench.ipynb"
ARTIFACTS = REPO / "test-artifacts"
CHROMIUM = Path("/usr/bin/chromium")
#: Utterances the app evaluates in these tests (the Python-side check uses the same).
EVAL_LIMIT = 16
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage"]
BIN = Path(sys.executable).parent


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "tests/browser/" in str(item.fspath).replace(os.sep, "/"):
            item.add_marker(pytest.mark.browser)


@dataclass(frozen=True)
class Server:
    url: str          # base URL, no trailing slash
    token: str        # "" when the server has none
    log: Path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _isolated_env(root: Path) -> dict[str, str]:
    env = dict(os.environ)
    for name in ("JUPYTER_CONFIG_DIR", "JUPYTER_RUNTIME_DIR", "JUPYTERLAB_SETTINGS_DIR",
                 "JUPYTERLAB_WORKSPACES_DIR"):
        d = root / name.lower()
        d.mkdir(parents=True, exist_ok=True)
        env[name] = str(d)
    notify = Path(env["JUPYTERLAB_SETTINGS_DIR"]) / "@jupyterlab" / "apputils-extension"
    notify.mkdir(parents=True, exist_ok=True)
    (notify / "notification.jupyterlab-settings").write_text(
        json.dumps({"fetchNews": "false", "checkForUpdates": False}))
    env["WORKBENCH_EVAL_LIMIT"] = str(EVAL_LIMIT)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _wait_up(url: str, proc: subprocess.Popen, log: Path, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited ({proc.returncode}); log:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    raise RuntimeError(f"server did not answer {url} in {timeout} s; log:\n"
                       f"{log.read_text()[-3000:]}")


def _stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=5)


@pytest.fixture(scope="session")
def eval_limit() -> int:
    return EVAL_LIMIT


@pytest.fixture(scope="module")
def notebook_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("nb")
    shutil.copy(NOTEBOOK, d / NOTEBOOK.name)
    return d


@pytest.fixture(scope="module")
def lab_server(tmp_path_factory, notebook_dir) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("lab")
    port, token = _free_port(), secrets.token_hex(16)
    log = root / "lab.log"
    proc = subprocess.Popen(
        [str(BIN / "jupyter"), "lab", "--no-browser", "--allow-root", "--ip=127.0.0.1",
         f"--port={port}", f"--IdentityProvider.token={token}",
         f"--ServerApp.root_dir={notebook_dir}", "--LabApp.expose_app_in_browser=True"],
        env=_isolated_env(root), stdout=log.open("w"), stderr=subprocess.STDOUT, cwd=notebook_dir)
    try:
        _wait_up(f"http://127.0.0.1:{port}/api/status?token={token}", proc, log)
        yield Server(f"http://127.0.0.1:{port}", token, log)
    finally:
        _stop(proc)


@pytest.fixture(scope="module")
def voila_server(tmp_path_factory, notebook_dir) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("voila")
    port = _free_port()
    log = root / "voila.log"
    proc = subprocess.Popen(
        [str(BIN / "voila"), str(notebook_dir / NOTEBOOK.name), "--no-browser",
         f"--port={port}", "--Voila.ip=127.0.0.1"],
        env=_isolated_env(root), stdout=log.open("w"), stderr=subprocess.STDOUT, cwd=notebook_dir)
    try:
        _wait_up(f"http://127.0.0.1:{port}/voila/static/voila.js", proc, log)
        yield Server(f"http://127.0.0.1:{port}", "", log)
    finally:
        _stop(proc)


@pytest.fixture(scope="module")
def voila_for(tmp_path_factory) -> Iterator:
    """Start Voila on a notebook of the test's own (path) -> Server; stopped after the module."""
    procs: list[subprocess.Popen] = []

    def start(notebook: Path) -> Server:
        root = tmp_path_factory.mktemp("voila-own")
        port = _free_port()
        log = root / "voila.log"
        proc = subprocess.Popen(
            [str(BIN / "voila"), str(notebook), "--no-browser", f"--port={port}",
             "--Voila.ip=127.0.0.1"], env=_isolated_env(root), stdout=log.open("w"),
            stderr=subprocess.STDOUT, cwd=notebook.parent)
        procs.append(proc)
        _wait_up(f"http://127.0.0.1:{port}/voila/static/voila.js", proc, log)
        return Server(f"http://127.0.0.1:{port}", "", log)

    try:
        yield start
    finally:
        for proc in procs:
            _stop(proc)


@pytest.fixture()
def browser_page(tmp_path):
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is missing: apt-get install chromium (make apt does)")
    from playwright.sync_api import sync_playwright
    with sync_playwright() as pw:
        ctx = pw.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"), executable_path=str(CHROMIUM), headless=True,
            args=CHROMIUM_ARGS, viewport={"width": 1500, "height": 1100})
        try:
            page = ctx.new_page()
            page.set_default_timeout(120_000)
            yield page
        finally:
            ctx.close()
