"""Guard: no module of workbench/ui starts a thread, a process or a task, or sleeps (issue 12:
"tabs submit jobs; no tab starts a thread or sleeps"). Background work goes through the engine's
job queue (workbench.engine.jobs.JOBS) and model runs through its RUN_LOCK, so priorities and
cancellation work; a thread or a sleep in a tab would bypass both.

The check reads the source (AST) of every .py file under workbench/ui, resolving import aliases
(`import threading as t`, `from time import sleep as nap`). Locks, events and conditions are
fine (the tabs guard their own state with them); so is the kernel loop's `call_later`
(ui/live.py closes a replaced figure later on the loop; no model work).
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

UI = Path(__file__).resolve().parents[1] / "workbench" / "ui"

#: Any use of these modules (they exist to run code in parallel).
BANNED_MODULES = ("multiprocessing", "concurrent.futures", "_thread")
#: These names, wherever they come from.
BANNED_NAMES = ("threading.Thread", "threading.Timer", "time.sleep", "asyncio.sleep",
                "asyncio.create_task", "asyncio.ensure_future", "asyncio.to_thread",
                "asyncio.run_coroutine_threadsafe")
#: Methods that start work elsewhere, on any object (an event loop, a task group).
BANNED_METHODS = ("create_task", "ensure_future", "run_in_executor", "to_thread",
                  "start_new_thread")


def _dotted(node: ast.AST) -> str | None:
    parts: list[str] = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    parts.append(node.id)
    return ".".join(reversed(parts))


def _banned(qualified: str) -> str | None:
    for name in BANNED_MODULES + BANNED_NAMES:
        if qualified == name or qualified.startswith(name + "."):
            return name
    return None


def violations(source: str, filename: str = "<source>") -> list[str]:
    """'file:line: what' for each thread / process / task start or sleep in `source`."""
    tree = ast.parse(source, filename)
    alias: dict[str, str] = {}              # local name -> qualified name
    found: set[tuple[int, str]] = set()
    for node in ast.walk(tree):             # imports first (anywhere in the file)
        if isinstance(node, ast.Import):
            for a in node.names:
                alias[a.asname or a.name.split(".")[0]] = a.name if a.asname else \
                    a.name.split(".")[0]
                if (hit := _banned(a.name)) is not None:
                    found.add((node.lineno, f"imports {hit}"))
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            for a in node.names:
                qualified = f"{node.module}.{a.name}"
                alias[a.asname or a.name] = qualified
                if (hit := _banned(qualified)) is not None:
                    found.add((node.lineno, f"imports {hit}"))
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr in BANNED_METHODS:
            found.add((node.lineno, f".{node.attr}"))
        if isinstance(node, (ast.Name, ast.Attribute)):
            dotted = _dotted(node)
            if dotted is None:
                continue
            head, _, rest = dotted.partition(".")
            qualified = alias.get(head, head) + ("." + rest if rest else "")
            if (hit := _banned(qualified)) is not None:
                found.add((node.lineno, hit))
    return [f"{filename}:{line}: {what}" for line, what in sorted(found)]


@pytest.mark.parametrize("source", [
    "import threading\nthreading.Thread(target=print).start()",
    "from threading import Thread\nclass W(Thread):\n    pass",
    "import threading as th\nth.Timer(1.0, print).start()",
    "import time\ndef f():\n    time.sleep(0.1)",
    "def f():\n    from time import sleep as nap\n    nap(1)",
    "from concurrent.futures import ThreadPoolExecutor",
    "import concurrent.futures\nconcurrent.futures.ProcessPoolExecutor()",
    "import multiprocessing as mp\nmp.Process(target=print)",
    "import _thread",
    "import asyncio\nasyncio.ensure_future(f())",
    "from asyncio import create_task\ncreate_task(f())",
    "loop.run_in_executor(None, f)",
    "async def f(loop):\n    loop.create_task(g())",
    "import asyncio\nasync def f():\n    await asyncio.sleep(1)",
])
def test_the_check_finds_each_kind(source: str) -> None:
    assert violations(source), source


@pytest.mark.parametrize("source", [
    "import threading\nlock = threading.Lock()\nr = threading.RLock()\ne = threading.Event()",
    "import time\nt = time.perf_counter()\nm = time.monotonic()",
    "from workbench.engine.jobs import JOBS\nJOBS.submit(lambda job: None, name='x')",
    "loop.add_callback(lambda: loop.call_later(1.0, w.close))",
    "def sleep():\n    pass\nsleep()",                  # a local function named sleep
])
def test_the_check_allows_locks_clocks_and_jobs(source: str) -> None:
    assert violations(source) == []


def test_no_ui_module_starts_a_thread_or_sleeps() -> None:
    files = sorted(UI.rglob("*.py"))
    assert len(files) >= 10, f"found only {len(files)} files under {UI}"
    bad = [v for f in files for v in violations(f.read_text(), str(f.relative_to(UI.parent)))]
    assert not bad, ("workbench/ui must submit background work to workbench.engine.jobs.JOBS "
                     "(model runs under RUN_LOCK), not start threads or sleep:\n  "
                     + "\n  ".join(bad))
