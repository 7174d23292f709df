"""Function-level imports exist for import speed only (issue 12, deliverable 3).

An import inside a function is there to keep `import workbench` light: it defers a module that
`import workbench` does not load (onnx, onnxruntime, ipywidgets, plotly, ray, optuna, the UI, the
export...). An import of a module that `import workbench` has already loaded buys no speed, hides a
dependency and costs a lookup per call; it belongs at the top of the module. The rare exception
says why on its line (or on a comment line just above it), e.g. "looked up per call: tests
monkeypatch it"; an import guarded by `try: ... except ImportError` states its reason by the guard.
Cycles are checked separately (tests/test_lint.py::test_no_function_level_import_dodges_a_cycle).
"""
import ast
import io
import json
import os
import subprocess
import sys
import tokenize
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "workbench"

# After `import workbench`: every loaded module, and which `from X import n` names are modules
# (n a submodule of X), so that `from torch import onnx` counts as deferring torch.onnx.
_LOADED = r'''
import importlib.util, json, sys
import workbench
pairs = json.loads(sys.stdin.read())
loaded = sorted(sys.modules)
def is_module(name):
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError, AttributeError):
        return False
submodules = [f"{x}.{n}" for x, n in pairs if f"{x}.{n}" in sys.modules or
              (x in sys.modules and is_module(f"{x}.{n}"))]
print(json.dumps({"loaded": loaded, "submodules": submodules}))
'''


def _function_level_imports(package: Path = PACKAGE
                             ) -> list[tuple[Path, ast.Import | ast.ImportFrom, list[int]]]:
    """Every import statement inside a function body under `package` (outside a try/except
    ImportError guard), with the line numbers of its comments (its own lines and a comment-only
    line just above)."""
    found = []
    for path in sorted(package.rglob("*.py")):
        text = path.read_text()
        comments = {tok.start[0] for tok in tokenize.generate_tokens(io.StringIO(text).readline)
                    if tok.type == tokenize.COMMENT}
        lines = text.splitlines()
        for node in _late_imports(ast.parse(text), False, False):
            first = node.lineno - 1 if lines[node.lineno - 2:node.lineno - 1] and \
                lines[node.lineno - 2].lstrip().startswith("#") else node.lineno
            found.append((path, node, [i for i in range(first, node.end_lineno + 1) if i in comments]))
    return found


def _late_imports(node: ast.AST, in_func: bool, guarded: bool):
    """Import statements under `node` that are inside a function and not guarded by a try whose
    handler catches ImportError (an optional dependency: the guard states the reason)."""
    for child in ast.iter_child_nodes(node):
        if in_func and isinstance(child, (ast.Import, ast.ImportFrom)) and not guarded:
            yield child
        inside = in_func or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef))
        if isinstance(child, ast.Try) and _catches_import_error(child):
            for stmt in child.body:
                yield from _late_imports(ast.Module(body=[stmt], type_ignores=[]), inside, True)
            for part in (*child.handlers, *child.orelse, *child.finalbody):
                yield from _late_imports(ast.Module(body=[part], type_ignores=[]), inside, guarded)
            continue
        yield from _late_imports(child, inside, guarded)


def _catches_import_error(node: ast.Try) -> bool:
    for handler in node.handlers:
        types = handler.type.elts if isinstance(handler.type, ast.Tuple) else [handler.type]
        if any(isinstance(t, ast.Name) and t.id in ("ImportError", "ModuleNotFoundError")
               for t in types):
            return True
    return False


def _loaded_by_import_workbench(pairs: list[tuple[str, str]]) -> tuple[set[str], set[str]]:
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    out = subprocess.run([sys.executable, "-c", _LOADED], input=json.dumps(pairs), cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout.strip().splitlines()[-1])
    return set(data["loaded"]), set(data["submodules"])


def _targets(node: ast.Import | ast.ImportFrom, submodules: set[str]) -> list[str]:
    """The modules the statement makes sure are loaded."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    return [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in submodules else node.module
            for a in node.names]


def test_function_level_imports_are_for_import_speed():
    found = _function_level_imports()
    assert len(found) > 50, "the scan found almost no function-level import: is it broken?"
    pairs = sorted({(n.module, a.name) for _, n, _ in found if isinstance(n, ast.ImportFrom)
                    for a in n.names})
    loaded, submodules = _loaded_by_import_workbench(pairs)
    assert "workbench.plan" in loaded and "ipywidgets" not in loaded    # the subprocess worked
    bad = [f"{path.relative_to(REPO)}:{node.lineno}: {ast.unparse(node)}"
           for path, node, comments in found
           if all(t in loaded for t in _targets(node, submodules)) and not comments]
    assert not bad, (f"{len(bad)} function-level import(s) of modules `import workbench` already "
                     "loads: move them to the top of the module (or give the reason in a comment "
                     "on the line):\n" + "\n".join(bad))


def test_the_scan_sees_what_it_must(tmp_path):
    """The rule's parts on a toy source: a late import of a loaded module with no comment is
    found, a commented one and one under `except ImportError` carry their reason."""
    src = ("def f():\n    import json\n\n"
           "def g():\n    # looked up per call\n    import json\n\n"
           "def h():\n    try:\n        import json\n    except ImportError:\n        pass\n\n"
           "import json\n")
    (tmp_path / "m.py").write_text(src)
    found = _function_level_imports(tmp_path)
    assert [(n.lineno, bool(c)) for _, n, c in found] == [(2, False), (6, True)]
