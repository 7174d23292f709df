"""The notebooks in notebooks/: committed clean, written to the lesson rules, and executed headless.

Fast checks (every run): no outputs, execution counts or widget state are committed; every lesson
imports the package (no `sys.path` edits), has an interactive figure and ends with "Try this".

Slow check (`-m slow`): each notebook runs top to bottom in a fresh kernel with nbclient. No time
bound is asserted here (a shared 2-core machine makes one a lottery): the 120 s budget per lesson is
a figure in `workbench bench lessons --json`. The kernel gets this checkout first on PYTHONPATH, so
the test runs the code under test even when another copy of workbench is installed.
"""
from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from workbench.lesson_timing import CELL_TIMEOUT_SECONDS, bench_lessons, execute_notebook

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = REPO / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
LESSONS = ("01_where_the_cost_is", "02a_pruning_granularity", "02b_pruning_importance_recovery",
           "03_quantization", "04_low_rank",
           "05_edge_latency", "06_export_to_production", "07_bring_your_own_model",
           "08_capstone", "09_efficient_attention", "10_robustness", "11_streaming",
           "12_full_whisper")
DEMO_CHECKPOINT = REPO / "data" / "models" / "demo" / "model.safetensors"
#: Notebook-level metadata a clean notebook may carry.
ALLOWED_METADATA = {"kernelspec", "language_info"}


def _read(path: Path) -> nbformat.NotebookNode:
    return nbformat.read(path, as_version=4)


def _code(nb: nbformat.NotebookNode) -> str:
    return "\n".join(c.source for c in nb.cells if c.cell_type == "code")


def test_there_are_notebooks_and_every_lesson_is_there() -> None:
    names = {p.stem for p in NOTEBOOKS}
    missing = [name for name in LESSONS if name not in names]
    assert not missing, f"lessons missing from {NOTEBOOK_DIR}: {missing}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_committed_without_outputs_or_widget_state(path: Path) -> None:
    nb = _read(path)
    nbformat.validate(nb)
    extra = set(nb.metadata) - ALLOWED_METADATA
    assert not extra, (f"{path.name}: notebook metadata {sorted(extra)} must not be committed "
                       f"(widget state / execution records); clear outputs and save again.")
    for i, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        assert cell.outputs == [], f"{path.name}, cell {i}: has outputs; clear them before commit."
        assert cell.execution_count is None, f"{path.name}, cell {i}: has an execution count."
        assert "execution" not in cell.metadata, f"{path.name}, cell {i}: has execution timing."


@pytest.mark.parametrize("name", LESSONS)
def test_lesson_follows_the_lesson_rules(name: str) -> None:
    path = NOTEBOOK_DIR / f"{name}.ipynb"
    if not path.is_file():
        pytest.fail(f"{path}: missing")
    nb = _read(path)
    code = _code(nb)
    markdown = "\n".join(c.source for c in nb.cells if c.cell_type == "markdown")
    assert "sys.path" not in code, f"{path.name}: no sys.path edits; `import workbench` only."
    assert "import workbench" in code, f"{path.name}: must use the package"
    assert "widgets.interact" in code or ".observe(" in code, \
        f"{path.name}: needs at least one interactive figure (ipywidgets)"
    assert "## Try this" in nb.cells[-1].source, f"{path.name}: must end with a 'Try this' section"
    assert markdown.lstrip().startswith("# "), f"{path.name}: must start with a title"


# ---- execution ----------------------------------------------------------------------------------

# `workbench bench lessons` and this test run notebooks with the same function
# (workbench.lesson_timing.execute_notebook: fresh kernel, this checkout first on PYTHONPATH, the
# sliced-poll kernel manager - why: see its docstring), so the two cannot drift apart.


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_headless(path: Path, tmp_path: Path) -> None:
    pytest.importorskip("nbclient")
    nb = _read(path)
    if ("load_demo" in _code(nb) or "Workbench.demo" in _code(nb)) and \
            not DEMO_CHECKPOINT.is_file():
        pytest.skip(f"{DEMO_CHECKPOINT}: the demo model is missing (`workbench train --demo`).")
    from nbclient.exceptions import CellExecutionError

    try:
        # CELL_TIMEOUT_SECONDS per cell is a hang guard only, not a budget
        executed, _seconds = execute_notebook(path, cell_timeout=CELL_TIMEOUT_SECONDS)
    except CellExecutionError as err:
        pytest.fail(f"{path.name} failed:\n{str(err)[-3000:]}")
    nbformat.write(executed, tmp_path / path.name)   # for inspection after a failure
    # An exception inside an `interact` callback does not fail its cell: it is shown in the
    # widget's output area, which nbclient keeps in the widget state. Look there too.
    widget_outputs = _widget_outputs(executed)
    errors = [f"{o['ename']}: {o['evalue']}" for o in widget_outputs
              if o.get("output_type") == "error"]
    assert not errors, f"{path.name}: an interactive figure failed: {errors}"
    if path.stem in LESSONS:
        assert any(PLOTLY_MIME in o.get("data", {}) for o in widget_outputs), \
            f"{path.name}: no interactive plotly figure was drawn"


def _notebook(folder: Path, name: str, *sources: str) -> Path:
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(s) for s in sources])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                 "language": "python"}
    path = folder / f"{name}.ipynb"
    nbformat.write(nb, path)
    return path


def test_bench_lessons_reports_seconds_kernel_cpu_cells_and_failures(tmp_path: Path) -> None:
    """`workbench bench lessons` on two small notebooks: one burns 0.5 s of its kernel's CPU
    (measured by the kernel itself), one raises. No time bound is asserted: the CPU figure is
    checked against the work the kernel did, which the load does not change."""
    pytest.importorskip("nbclient")
    _notebook(tmp_path, "a_busy", "import time\nt0 = time.process_time()\n"
                                  "while time.process_time() - t0 < 0.5:\n    pass", "x = 1")
    _notebook(tmp_path, "b_broken", "raise ValueError('lesson bug')")
    doc = bench_lessons(budget_s=1e6, folder=tmp_path)
    busy, broken = doc["notebooks"]
    assert busy["notebook"] == "a_busy" and busy["error"] is None and busy["pass"]
    assert busy["kernel_cpu_seconds"] >= 0.5                 # at least the loop's own CPU time
    assert busy["seconds"] > 0 and len(busy["slowest_cells"]) == 2
    loop = next(c for c in busy["slowest_cells"] if c["cell"] == 0)
    assert "import time" in loop["source"] and loop["seconds"] >= 0.5   # wall >= its own CPU
    assert broken["error"].startswith("CellExecutionError") or "lesson bug" in broken["error"]
    assert not broken["pass"] and doc["passed"] == 1 and doc["total"] == 2 and not doc["all_pass"]
    assert doc["cpu_count"] and len(doc["load_avg_before"]) == 3
    strict = bench_lessons(only=["a_busy"], budget_s=1e-3, folder=tmp_path)
    assert strict["total"] == 1 and not strict["notebooks"][0]["pass"]   # over budget: fails


PLOTLY_MIME = "application/vnd.plotly.v1+json"


def _widget_outputs(nb: nbformat.NotebookNode) -> list[dict]:
    """Outputs captured by Output widgets (interact's output area) during execution."""
    state = nb.metadata.get("widgets", {}).get("application/vnd.jupyter.widget-state+json", {})
    return [o for model in state.get("state", {}).values()
            for o in (model.get("state", {}).get("outputs") or [])]


# ---- the figure builders the lessons use (workbench.ui.lesson_figures) ---------------------------

def test_weight_histogram_draws_one_line_per_grid_level() -> None:
    pytest.importorskip("plotly")
    from workbench.ui import lesson_figures as lf

    levels = [-0.5, -0.25, 0.0, 0.25, 0.5]
    fig = lf.weight_histogram([0.1, -0.2, 0.3], levels, "t", quantized=[0.0, -0.25, 0.25])
    grid = fig.data[-1]
    drawn = sorted({x for x in grid.x if x is not None})
    assert drawn == levels and len(grid.x) == 3 * len(levels)


def test_roofline_roof_is_min_of_peak_and_bandwidth_times_intensity() -> None:
    pytest.importorskip("plotly")
    from workbench.ui import lesson_figures as lf

    fig = lf.roofline([0.5, 50.0], [1.0, 20.0], ["a", "b"], ["norm", "ffn"],
                      {"fp32": 48.0}, bandwidth_gbs=4.8, title="t")
    roof = fig.data[0]
    for x, y in zip(roof.x, roof.y):
        assert y == pytest.approx(min(48.0, 4.8 * x), rel=1e-9)
    ridge = fig.data[1]
    assert list(ridge.x) == [pytest.approx(10.0), pytest.approx(10.0)]
    assert {trace.name for trace in fig.data[2:]} == {"norm", "ffn"}


def test_stacked_bars_mark_the_total_of_each_bar_with_its_error() -> None:
    pytest.importorskip("plotly")
    from workbench.ui import lesson_figures as lf

    fig = lf.stacked_bars(["rpi4", "rpi5"], {"ffn": [3.0, 1.0], "attention": [2.0, 1.5]}, "t",
                          "ms", total_errors=[2.5, 1.25])
    total = fig.data[-1]
    assert list(total.y) == [5.0, 2.5] and list(total.error_y.array) == [2.5, 1.25]
