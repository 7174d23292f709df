"""`workbench bench lessons`: run each notebook headless and time it (and its cells) against a budget.

Why a benchmark and not a test: a time bound asserted in a test fails whenever another process
shares the 2 cores. Here the seconds are reported with the load average before and after, so a
reader can tell a slow lesson from a busy machine. Budget: 120 s per lesson on a quiet machine
(the README promises "a minute or two").

Each notebook runs top to bottom in a fresh python3 kernel with nbclient (cwd: its folder; this
checkout first on PYTHONPATH); the executed copy stays in memory. Needs the `nbclient` package.
"""
from __future__ import annotations

import os
import sys
import time
from datetime import datetime
from pathlib import Path
from queue import Empty

from workbench.errors import WorkbenchError

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = REPO / "notebooks"
#: Wall-clock budget per lesson on a quiet machine (2 cores).
BUDGET_SECONDS = 120.0
#: A cell running longer than this is treated as hung (a guard, not a budget).
CELL_TIMEOUT_SECONDS = 600


def sliced_poll_kernel_manager():
    """An AsyncKernelManager whose clients read the shell / iopub sockets in 200 ms slices.

    Why: with ipywidgets' `interact` showing a large output, the client's asyncio poll on the
    shell socket can miss the wake-up for an `execute_reply` that has already arrived, and
    nbclient then waits for the full cell timeout before reading it (jupyter/nbclient#312,
    jupyter/nbconvert#2029). Re-polling every 200 ms (and once more without waiting) reads such
    a message at once; nothing else changes.
    """
    from jupyter_client import AsyncKernelManager
    from jupyter_client.asynchronous import AsyncKernelClient
    from jupyter_client.channels import AsyncZMQSocketChannel
    from traitlets import default

    class SlicedPollChannel(AsyncZMQSocketChannel):
        async def get_msg(self, timeout: float | None = None) -> dict:
            deadline = None if timeout is None else time.monotonic() + timeout
            while True:
                left = None if deadline is None else deadline - time.monotonic()
                step_ms = 200 if left is None else max(0, min(200, int(left * 1000)))
                if await self.socket.poll(step_ms) or await self.socket.poll(0):
                    return await self._recv()
                if left is not None and left <= 0.2:
                    raise Empty

    class SlicedPollClient(AsyncKernelClient):
        shell_channel_class = SlicedPollChannel
        iopub_channel_class = SlicedPollChannel

    class SlicedPollKernelManager(AsyncKernelManager):
        @default("client_factory")
        def _default_client_factory(self) -> type:
            return SlicedPollClient

    return SlicedPollKernelManager


def execute_notebook(path: Path, cell_timeout: int = CELL_TIMEOUT_SECONDS):
    """Run `path` in a fresh python3 kernel (cwd: its folder); returns (executed notebook, in
    memory only; wall-clock seconds, kernel start included). Raises nbclient's CellExecutionError.
    The kernel is a child process, shut down and reaped before this returns, so its CPU time is
    in `resource.getrusage(RUSAGE_CHILDREN)` afterwards (see `kernel_cpu_seconds`)."""
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [env.get("PYTHONPATH")])])
    client = NotebookClient(nb, timeout=cell_timeout, kernel_name="python3", record_timing=True,
                            kernel_manager_class=sliced_poll_kernel_manager(),
                            resources={"metadata": {"path": str(path.parent)}})
    start = time.perf_counter()
    client.execute(env=env)
    return nb, time.perf_counter() - start


def _children_cpu() -> float | None:
    """User + system CPU seconds of this process's reaped children (None where unsupported)."""
    try:
        import resource
    except ImportError:   # not on this platform
        return None
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def cell_seconds(nb) -> list[tuple[int, float, str]]:
    """(cell index, seconds, first source line) of each executed code cell, from nbclient's
    `execution` timestamps (execute_input -> execute_reply)."""
    out = []
    for i, cell in enumerate(nb.cells):
        ex = cell.get("metadata", {}).get("execution", {})
        t0, t1 = ex.get("iopub.execute_input"), ex.get("shell.execute_reply")
        if cell.cell_type != "code" or not (t0 and t1):
            continue
        secs = (_stamp(t1) - _stamp(t0)).total_seconds()
        first = next((ln for ln in cell.source.splitlines() if ln.strip()), "")
        out.append((i, round(secs, 2), first[:80]))
    return out


def _stamp(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def _load() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:   # not on this platform
        return []


def select_notebooks(only: list[str] | None = None, folder: Path = NOTEBOOK_DIR) -> list[Path]:
    """Notebooks in `folder`, or the ones named in `only` (stem, with or without .ipynb; a
    unique prefix such as "02" works). Unknown names raise a WorkbenchError naming them."""
    if not folder.is_dir():
        raise WorkbenchError(f"{folder}: no notebooks folder; run the lessons bench from a "
                             f"checkout of the workbench repository.")
    found = sorted(folder.glob("*.ipynb"))
    if not only:
        return found
    chosen = []
    for name in only:
        stem = name.removesuffix(".ipynb")
        hits = [p for p in found if p.stem == stem] or [p for p in found if p.stem.startswith(stem)]
        if len(hits) != 1:
            from workbench.cli_checks import closest
            hint = closest(stem, [p.stem for p in found]) if not hits else ""
            raise WorkbenchError(f"--only {name}: {'ambiguous' if hits else 'no such notebook'} "
                                 f"in {folder};{hint} known: {', '.join(p.stem for p in found)}")
        chosen.append(hits[0])
    return chosen


def bench_lessons(only: list[str] | None = None, budget_s: float = BUDGET_SECONDS,
                  top_cells: int = 3, folder: Path = NOTEBOOK_DIR) -> dict:
    """Time each notebook; every one must finish within `budget_s` (meaningful on a quiet
    machine: compare `load_avg_before` with the number of cores)."""
    import torch  # noqa: F401  (fail here, not in the kernel, if the stack is broken)

    try:
        import nbclient  # noqa: F401
    except ImportError as err:
        raise WorkbenchError("bench lessons: the `nbclient` package is missing; install the test "
                             "requirements (pip install -r requirements-test.txt).") from err
    if not budget_s > 0:
        raise WorkbenchError(f"--budget {budget_s}: must be a positive number of seconds.")
    paths = select_notebooks(only, folder)
    rows, load_before = [], _load()
    for path in paths:
        print(f"lessons: running {path.name} ...", file=sys.stderr, flush=True)
        load0 = _load()
        t0 = time.perf_counter()
        row: dict = {"notebook": path.stem, "load_avg_before": load0}
        cpu0 = _children_cpu()
        try:
            nb, seconds = execute_notebook(path)
            cells = sorted(cell_seconds(nb), key=lambda c: -c[1])
            row["slowest_cells"] = [{"cell": i, "seconds": s, "source": src}
                                    for i, s, src in cells[:top_cells]]
            row["error"] = None
        except Exception as err:  # noqa: BLE001 - a failing lesson is a result, not a crash
            seconds = time.perf_counter() - t0
            row["error"] = f"{type(err).__name__}: {str(err).strip().splitlines()[-1][:300]}" \
                if str(err).strip() else type(err).__name__
        row["seconds"] = round(seconds, 1)
        cpu1 = _children_cpu()
        # The kernel's own CPU time: on a busy machine the wall clock grows with the load, this
        # does not (on 2 idle cores the wall clock is between cpu_seconds / 2 and cpu_seconds).
        row["kernel_cpu_seconds"] = round(cpu1 - cpu0, 1) if cpu0 is not None else None
        row["pass"] = row["error"] is None and seconds <= budget_s
        rows.append(row)
        print(f"lessons: {path.name} {seconds:.1f} s ({'pass' if row['pass'] else 'FAIL'})",
              file=sys.stderr, flush=True)
    load_after = _load()
    return {
        "budget_s_per_notebook": budget_s,
        "notebooks": rows,
        "passed": sum(r["pass"] for r in rows), "total": len(rows),
        "all_pass": all(r["pass"] for r in rows),
        "load_avg_before": load_before, "load_avg_after": load_after,
        "cpu_count": os.cpu_count(),
        "definition": "seconds = wall clock of a fresh kernel running the notebook top to bottom "
                      "(kernel start included), measured here; pass = no error and seconds <= "
                      "budget. Valid as an acceptance figure only on a quiet machine: load "
                      "averages [1, 5, 15 min] are given before and after. "
                      "kernel_cpu_seconds = user + system CPU time of the notebook's kernel "
                      "process (load-independent; the wall clock on 2 idle cores lies between "
                      "half of it and all of it).",
    }


def add_arguments(parser) -> None:
    """Options of `workbench bench lessons` (added to the bench sub-parser)."""
    parser.add_argument("--only", action="append", default=None, metavar="NOTEBOOK",
                        help="lessons: run only this notebook (stem or unique prefix; repeatable)")
    parser.add_argument("--budget", type=float, default=BUDGET_SECONDS,
                        help="lessons: seconds allowed per notebook (default 120)")
