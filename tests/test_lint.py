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


_CYCLES = r'''
import ast, json, pathlib, sys
import grimp
import workbench
root = pathlib.Path(workbench.__file__).parent
graph = grimp.build_graph("workbench", cache_dir=None)
found = set()
def reaches(target, mod):
    """Does importing `target` (its package __init__s first) import `mod` back?"""
    parts = target.split(".")
    for i in range(2, len(parts) + 1):
        start = ".".join(parts[:i])
        if mod == start or mod.startswith(start + "."):
            continue                 # mod's own package: imported before mod anyway
        if graph.find_shortest_chain(importer=start, imported=mod):
            return True
    return False
for path in sorted(root.rglob("*.py")):
    tree = ast.parse(path.read_text())
    mod = ".".join(path.relative_to(root.parent).with_suffix("").parts).removesuffix(".__init__")
    def visit(node, in_func):
        for child in ast.iter_child_nodes(node):
            inside = in_func or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef))
            targets = []
            if in_func and isinstance(child, ast.ImportFrom) and \
                    (child.module or "").startswith("workbench"):
                targets = [f"{child.module}.{a.name}" if f"{child.module}.{a.name}" in graph.modules
                           else child.module for a in child.names]
            elif in_func and isinstance(child, ast.Import):
                targets = [a.name for a in child.names if a.name.startswith("workbench")]
            for target in targets:
                if target != mod and target in graph.modules and reaches(target, mod):
                    found.add((mod, target))
            visit(child, inside)
    visit(tree, False)
print(json.dumps(sorted(found)))
'''


def test_no_function_level_import_dodges_a_cycle():
    """Function-level imports are for import speed (heavy or optional dependencies, keeping
    `import workbench` light), never to hide an import cycle: a late import whose module imports
    the importer back (at any depth, through its packages' __init__ too) is a cycle. None is
    left (issue 12); fix a new one by moving code to the layer it belongs to."""
    import json
    out = _run([sys.executable, "-c", _CYCLES])
    assert out.returncode == 0, out.stderr
    found = sorted(tuple(pair) for pair in json.loads(out.stdout))
    assert not found, f"cycle(s) hidden by a late import (importer, imported): {found}"
