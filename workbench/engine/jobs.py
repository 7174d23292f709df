"""Background work for the app, one model run at a time: a priority run lock and a job queue.

Why one at a time: two torch processes (or threads) with 2 threads each on these 2 cores ran ~10x
slower than one (DESIGN.md section 3), so every model run in the app holds `RUN_LOCK`.
Why priorities: a slider's WER evaluation must not wait for a whole sensitivity sweep. A sweep
takes the lock once per cell at BACKGROUND priority; when the lock is released it goes to the
highest-priority waiter (FIFO within a priority), so the slider's evaluation (INTERACTIVE) gets in
between two cells — no sleeps, no polling.

    job = JOBS.submit(fn, name="sweep", priority=BACKGROUND, on_progress=..., on_done=...)
    fn(job) runs on the queue's worker thread; it calls job.progress(done, total) and checks
    job.cancelled (or job.check(), which raises Cancelled) between steps; job.cancel() asks it
    to stop (a queued job never starts).

Tabs submit jobs; none starts a thread or sleeps (tests/test_ui_threads.py checks it).
"""
from __future__ import annotations

import heapq
import itertools
import sys
import threading
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from workbench.errors import Cancelled  # also re-exported from here

#: Priorities (higher runs first): a slider's evaluation, a user-started job, a long background job.
INTERACTIVE, USER, BACKGROUND = 30, 20, 10


class PriorityLock:
    """A lock handed to its highest-priority waiter on release (FIFO within a priority).

    `with lock:` takes it at USER priority; `with lock.hold(p):` at priority p. Not reentrant."""

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._held = False
        self._waiting: list[tuple[int, int]] = []     # heap of (-priority, ticket)
        self._tickets = itertools.count()

    def acquire(self, priority: int = USER) -> None:
        with self._cond:
            entry = (-priority, next(self._tickets))
            heapq.heappush(self._waiting, entry)
            while self._held or self._waiting[0] != entry:
                self._cond.wait()
            heapq.heappop(self._waiting)
            self._held = True

    def release(self) -> None:
        with self._cond:
            if not self._held:
                raise RuntimeError("PriorityLock.release: not held")
            self._held = False
            self._cond.notify_all()

    def locked(self) -> bool:
        return self._held

    @contextmanager
    def hold(self, priority: int = USER) -> Iterator[None]:
        self.acquire(priority)
        try:
            yield
        finally:
            self.release()

    def __enter__(self) -> PriorityLock:
        self.acquire()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()


#: The app's one run lock. Held by every model run the app starts: a slider's WER evaluation
#: (INTERACTIVE), a sweep cell and a recovery step (BACKGROUND), a search trial's evaluation, a
#: condition of the conditions grid, the streaming measurement, building a chosen model's
#: baseline, and the ONNX export (USER; released between two of its stages, so a slider's
#: evaluation gets in there). Not held by the cost caches' pricing (engine/costs.py: shape
#: tables, traced graphs and the analytic profile of a plan, for the header's readouts, the
#: profile tab and the suggestion).
RUN_LOCK = PriorityLock()


@dataclass(eq=False)
class Job:
    """A unit of background work; see the module docstring."""

    name: str
    priority: int
    fn: Callable[[Job], Any]
    on_done: Callable[[Any], None] | None = None
    on_error: Callable[[BaseException], None] | None = None
    on_progress: Callable[[int, int], None] | None = None
    state: str = "queued"          # queued | running | done | failed | cancelled
    result: Any = None
    error: BaseException | None = None
    _cancel: threading.Event = field(default_factory=threading.Event)
    _finished: threading.Event = field(default_factory=threading.Event)

    def cancel(self) -> None:
        self._cancel.set()

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    def check(self) -> None:
        if self._cancel.is_set():
            raise Cancelled(self.name)

    def progress(self, done: int, total: int) -> None:
        if self.on_progress is not None:
            self.on_progress(done, total)

    def wait(self, timeout: float | None = None) -> bool:
        """True when the job has finished (done, failed or cancelled) within `timeout`."""
        return self._finished.wait(timeout)

    @property
    def running(self) -> bool:
        return self.state in ("queued", "running")


class JobQueue:
    """Jobs run on up to `workers` threads, highest priority first (FIFO within a priority).

    The app's queue has a few workers so a long sweep does not hold back an export or a
    streaming measurement: their model runs still go one at a time, through RUN_LOCK, by
    priority. Workers are started on demand and end when the queue is empty.

    A slider's evaluation (INTERACTIVE) does not wait for long jobs: when every worker is busy
    (e.g. a sweep, an export, a search), one more thread starts (at most one) that runs
    INTERACTIVE jobs only, in order, and ends when none is queued. INTERACTIVE jobs still queue
    behind each other, so a stale one cancelled while queued never starts."""

    def __init__(self, name: str = "workbench-jobs", workers: int = 1) -> None:
        self.name = name
        self.workers = workers
        self._cond = threading.Condition()
        self._heap: list[tuple[int, int, Job]] = []
        self._tickets = itertools.count()
        self._threads: list[threading.Thread] = []     # workers (at most `workers`)
        self._extra: list[threading.Thread] = []       # the INTERACTIVE-only thread, if any

    def submit(self, fn: Callable[[Job], Any], *, name: str = "job", priority: int = USER,
               on_done: Callable[[Any], None] | None = None,
               on_error: Callable[[BaseException], None] | None = None,
               on_progress: Callable[[int, int], None] | None = None) -> Job:
        job = Job(name, priority, fn, on_done, on_error, on_progress)
        with self._cond:
            heapq.heappush(self._heap, (-priority, next(self._tickets), job))
            self._threads[:] = [w for w in self._threads if w.is_alive()]   # in place: workers hold them
            self._extra[:] = [w for w in self._extra if w.is_alive()]
            busy = self._busy(self._threads)
            if len(self._threads) < min(self.workers, len(self._heap) + busy):
                self._start(self._threads, interactive_only=False)
            elif priority >= INTERACTIVE and not self._extra and len(self._threads) == busy:
                self._start(self._extra, interactive_only=True)
        return job

    def _start(self, pool: list[threading.Thread], interactive_only: bool) -> None:
        worker = threading.Thread(target=self._work, args=(pool, interactive_only),
                                  name=self.name, daemon=True)
        pool.append(worker)
        worker.start()

    @staticmethod
    def _busy(pool: list[threading.Thread]) -> int:
        return sum(1 for w in pool if getattr(w, "busy", False))

    def pending(self) -> list[Job]:
        with self._cond:
            return [job for _, _, job in sorted(self._heap)]

    def _work(self, pool: list[threading.Thread], interactive_only: bool) -> None:
        me = threading.current_thread()
        while True:
            with self._cond:
                if not self._heap or (interactive_only and -self._heap[0][0] < INTERACTIVE):
                    pool[:] = [w for w in pool if w is not me]
                    return
                _, _, job = heapq.heappop(self._heap)
                me.busy = True
            try:
                self._run(job)
            finally:
                me.busy = False

    @staticmethod
    def _run(job: Job) -> None:
        if job.cancelled:            # cancelled while queued: never started
            job.state = "cancelled"
            JobQueue._deliver(job)
            return
        job.state = "running"
        try:
            job.result = job.fn(job)
        except Cancelled:
            job.state = "cancelled"
        except BaseException as err:  # delivered to on_error; the worker keeps serving
            job.state, job.error = "failed", err
        else:
            job.state = "cancelled" if job.cancelled else "done"
        JobQueue._deliver(job)

    @staticmethod
    def _deliver(job: Job) -> None:
        """Callbacks first, then `wait()` returns: a waiter sees what the callbacks did."""
        try:
            if job.state == "failed" and job.on_error is not None:
                job.on_error(job.error)
            elif job.state in ("done", "cancelled") and job.on_done is not None:
                job.on_done(job.result)
        except Exception:  # a callback's error must not stop the queue: print it, serve on
            traceback.print_exc(file=sys.stderr)
        finally:
            job._finished.set()


#: The app's job queue (tabs submit here).
JOBS = JobQueue(workers=4)
