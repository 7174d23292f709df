"""Lint rules (ruff) and import contracts (import-linter) hold for the package and its tests.

The rule set is in pyproject.toml ([tool.ruff]); the layer contracts in .importlinter, with the
picture in docs/architecture.md."""
import configparser
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def _run(args: list[str]) -> subprocess.CompletedProcess:
    # PYTHONPATH first: the contracts are checked on this checkout's package (a worktree or a clone),
    # not on whichever copy the venv has installed in editable mode.
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


def test_ruff_lint_rules_pass():
    out = _run([sys.executable, "-m", "ruff", "check", "--no-cache", "workbench", "tests"])
    assert out.returncode == 0, out.stdout + out.stderr


def test_import_contracts_hold():
    out = _run([str(BIN / "lint-imports"), "--no-cache"])
    assert out.returncode == 0, out.stdout + out.stderr
    assert "0 broken" in out.stdout, out.stdout


def _layered_modules() -> set[str]:
    cfg = configparser.ConfigParser()
    cfg.read(REPO / ".importlinter")
    layers = cfg["importlinter:contract:layers"]["layers"]
    names = set()
    for line in layers.split("\n"):
        for name in line.replace("|", ":").split(":"):
            name = name.strip().strip("()")
            if name:
                names.add(name)
    return names


def test_every_top_level_module_has_a_layer():
    """A module the layers contract does not name is unconstrained: place each one on purpose."""
    pkg = REPO / "workbench"
    top = {p.stem for p in pkg.glob("*.py") if p.stem != "__init__"}
    top |= {p.name for p in pkg.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    missing = sorted(top - _layered_modules())
    assert not missing, f"add these to a layer in .importlinter: {missing}"
