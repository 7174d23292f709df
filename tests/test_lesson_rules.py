"""The lab rules of the lessons in notebooks/ (issue 20), read from the committed notebooks:

* the first cell states objectives, prerequisites and a time box;
* at least one implement-it-yourself cell: a stub that raises NotImplementedError, checked in
  the same cell by the `check_<name>` of `workbench.lessons.checks` for the function it defines;
* at least one predict-then-run: a `Predict(...)` before the cell that calls its `.reveal(...)`;
* the last cell, "## Try this", grades every exercise with one to three stars and gives each a
  **Check:** (an assert or an expected range);
* no measured result typed into markdown (the code computes and prints it);
* code cells use public names only: nothing imported or read whose name starts with "_"
  (private names, `module.__file__` paths into the package); a lesson that needs more gets a
  public function in `workbench.lessons` (e.g. lesson 05's `trace_for_edge`, `published_fit`).

Each implement-it-yourself cell is also executed here as committed: the stub raises, and the check
then runs itself on the reference solution and raises if the reference fails it, so this proves
the checks pass with the solutions without running the whole lesson (that is
tests/test_notebooks.py's slow test and `workbench bench lessons`).
"""
from __future__ import annotations

import ast
import re
from pathlib import Path

import nbformat
import pytest

from workbench.lessons.checks import CHECKS

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = REPO / "notebooks"
#: The lessons converted to labs so far (issue 20 lands them one by one; each must run and pass).
LAB_NAMES = ("00_workbench", "01_where_the_cost_is", "02a_pruning_granularity",
             "02b_pruning_importance_recovery", "03_quantization", "04_low_rank",
             "05_edge_latency", "06_export_to_production",
             "07_bring_your_own_model", "08_capstone", "09_efficient_attention",
             "10_robustness", "11_streaming", "12_full_whisper")
LABS = [NOTEBOOK_DIR / f"{name}.ipynb" for name in LAB_NAMES]

#: Markdown that states a measured result: "WER 0.74", "1.10 -> 0.74", "Measured here: 12 ms",
#: "1.8x faster". The code prints such numbers; markdown may state theory ("20 log10(2) dB per
#: bit"), shapes, settings and sources.
RESULT_PATTERNS = [
    re.compile(r"\b(WER|CER)\s*(of\s*|=\s*)?\d"),
    re.compile(r"\d\.\d+\s*(->|→)\s*\d"),
    re.compile(r"[Mm]easured here:?\s*[^.]*\d"),
    re.compile(r"\b\d+(\.\d+)?\s*x (faster|slower|as fast|smaller)"),
]
STUB = re.compile(r"^def (\w+)\(", re.M)


def _nb(path: Path) -> nbformat.NotebookNode:
    return nbformat.read(path, as_version=4)


def _implement_cells(nb: nbformat.NotebookNode) -> list[tuple[int, str, str]]:
    """(cell index, function name, source) of each stub cell."""
    out = []
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code" and "raise NotImplementedError" in cell.source:
            names = STUB.findall(cell.source)
            out.append((i, names[0] if names else "", cell.source))
    return out


def test_there_are_labs() -> None:
    missing = [p.name for p in LABS if not p.is_file()]
    assert not missing, f"lessons missing from {NOTEBOOK_DIR}: {missing}"


@pytest.mark.parametrize("path", LABS, ids=[p.stem for p in LABS])
def test_lesson_opens_with_objectives_prerequisites_and_time_box(path: Path) -> None:
    first = _nb(path).cells[0]
    assert first.cell_type == "markdown" and first.source.startswith("# "), \
        f"{path.name}: must open with a markdown title"
    for part in ("**Objectives.**", "**Prerequisites.**", "**Time box.**"):
        assert part in first.source, f"{path.name}: the first cell lacks {part}"


@pytest.mark.parametrize("path", LABS, ids=[p.stem for p in LABS])
def test_lesson_has_an_implement_it_yourself_cell_with_its_check(path: Path) -> None:
    cells = _implement_cells(_nb(path))
    assert cells, f"{path.name}: no implement-it-yourself cell (a stub raising NotImplementedError)"
    for i, _, source in cells:
        for name in STUB.findall(source):
            called = re.search(rf"check_(\w+)\({name}\)", source)
            assert called, (f"{path.name}, cell {i}: the stub `{name}` must be checked in its "
                            f"cell: check_<exercise>({name})")
            assert called.group(1) in CHECKS, (f"{path.name}, cell {i}: check_{called.group(1)} "
                                               f"is not in workbench.lessons.checks.CHECKS")


@pytest.mark.parametrize("path", LABS, ids=[p.stem for p in LABS])
def test_lesson_has_a_predict_then_run(path: Path) -> None:
    nb = _nb(path)
    code = [(i, c.source) for i, c in enumerate(nb.cells) if c.cell_type == "code"]
    made = [(i, m.group(1)) for i, s in code
            for m in re.finditer(r"(\w+)\s*=\s*Predict\(", s)]
    assert made, f"{path.name}: no predict-then-run (`guess = Predict(...)`)"
    for i, var in made:
        later = [j for j, s in code if j > i and f"{var}.reveal(" in s]
        assert later, f"{path.name}: `{var}` (cell {i}) is never revealed in a later cell"
        assert f"{var}.reveal(" not in nb.cells[i].source, \
            f"{path.name}, cell {i}: the guess and its answer must be in different cells"


@pytest.mark.parametrize("path", LABS, ids=[p.stem for p in LABS])
def test_every_exercise_is_graded_and_has_a_check(path: Path) -> None:
    last = _nb(path).cells[-1]
    assert last.cell_type == "markdown" and "## Try this" in last.source, \
        f"{path.name}: must end with a markdown 'Try this' section"
    items = re.split(r"\n(?=\d+\. )", last.source.split("## Try this", 1)[1])
    exercises = [item for item in items if re.match(r"\d+\. ", item.strip())]
    assert exercises, f"{path.name}: 'Try this' lists no numbered exercise"
    for item in exercises:
        head = item.strip().split("\n")[0][:60]
        stars = re.match(r"\d+\. (★{1,3})(?!★) ", item.strip())
        assert stars, f"{path.name}: exercise '{head}' needs one to three stars (★)"
        assert "**Check:**" in item, f"{path.name}: exercise '{head}' has no **Check:**"


@pytest.mark.parametrize("path", LABS, ids=[p.stem for p in LABS])
def test_no_measured_result_is_typed_into_markdown(path: Path) -> None:
    for i, cell in enumerate(_nb(path).cells):
        if cell.cell_type != "markdown":
            continue
        for pattern in RESULT_PATTERNS:
            found = pattern.search(cell.source)
            assert not found, (f"{path.name}, cell {i}: '{found.group(0)}' looks like a result "
                               f"typed into markdown; print it from the code instead")


def _is_private(name: str) -> bool:
    """'_x' is private; dunders are Python's protocol (`type(x).__name__`), except the ones that
    lead into a package's files."""
    if name.startswith("__") and name.endswith("__"):
        return name in ("__file__", "__path__")
    return name.startswith("_") and name != "_"


def _private_names(source: str) -> list[str]:
    """Private names (`_is_private`) a code cell imports or reads as an attribute."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom):
            found += [f"from {node.module} import {a.name}" for a in node.names
                      if _is_private(a.name)]
            if any(_is_private(part) for part in (node.module or "").split(".")):
                found.append(f"from {node.module} import ...")
        elif isinstance(node, ast.Import):
            found += [f"import {a.name}" for a in node.names
                      if any(_is_private(part) for part in a.name.split("."))]
        elif isinstance(node, ast.Attribute) and _is_private(node.attr):
            found.append(f".{node.attr}")
    return found


@pytest.mark.parametrize("path", LABS, ids=[p.stem for p in LABS])
def test_code_cells_use_public_names_only(path: Path) -> None:
    for i, cell in enumerate(_nb(path).cells):
        if cell.cell_type == "code":
            private = _private_names(cell.source)
            assert not private, (f"{path.name}, cell {i}: uses {', '.join(private)}; a lesson "
                                 f"calls public names (add one to workbench.lessons if needed)")


@pytest.mark.parametrize("path", LABS, ids=[p.stem for p in LABS])
def test_implement_cells_run_and_their_checks_pass_on_the_solutions(path: Path) -> None:
    import torch

    from workbench.lessons import checks

    for i, _, source in _implement_cells(_nb(path)):
        namespace: dict = {"torch": torch, **{k: v for k, v in vars(checks).items()
                                              if k.startswith("check_")}}
        # up to the last check: the lines after it may use the lesson's model and data
        lines = source.splitlines()
        last = max(j for j, line in enumerate(lines) if re.search(r"=\s*check_\w+\(", line))
        exec(compile("\n".join(lines[:last + 1]), f"{path.name}[{i}]", "exec"), namespace)
        results = [v for v in namespace.values() if isinstance(v, checks.CheckResult)]
        assert results, f"{path.name}, cell {i}: keep the check's result in a variable"
        assert all(r.status == "not implemented" for r in results), \
            f"{path.name}, cell {i}: committed stubs must raise NotImplementedError"
        # the lesson goes on with the reference, and the reference passes the check
        assert all(CHECKS[r.name](r.function).passed for r in results)
