"""The engine's job queue and priority run lock: order, cancellation, progress, errors.

Ordering is made deterministic with events (a blocker job holds the worker while the others
are queued), never with sleeps or timed assertions."""
from __future__ import annotations

import threading

import pytest

from workbench.engine.jobs import (BACKGROUND, INTERACTIVE, USER, Cancelled, JobQueue,
                                   PriorityLock)

WAIT = 60  # seconds: a generous bound for a thread to get scheduled on a busy machine


def _blocker(queue: JobQueue):
    started, release = threading.Event(), threading.Event()

    def fn(job):
        started.set()
        release.wait(WAIT)
    job = queue.submit(fn, name="blocker")
    assert started.wait(WAIT)
    return job, release


def test_jobs_run_by_priority_then_fifo() -> None:
    queue = JobQueue("test-jobs")
    order: list[str] = []
    blocker, release = _blocker(queue)
    jobs = [queue.submit(lambda j, n=n: order.append(n), name=n, priority=p)
            for n, p in (("bg1", BACKGROUND), ("user", USER), ("bg2", BACKGROUND),
                         ("live", INTERACTIVE))]
    release.set()
    assert all(j.wait(WAIT) for j in jobs)
    assert order == ["live", "user", "bg1", "bg2"]
    assert [j.state for j in jobs] == ["done"] * 4


def test_an_interactive_job_does_not_wait_for_a_busy_worker() -> None:
    """Every worker on a long job: a slider's evaluation (INTERACTIVE) still runs at once, on a
    thread that serves INTERACTIVE jobs only (the queued USER job waits for a worker)."""
    queue = JobQueue("test-interactive", workers=1)
    blocker, release = _blocker(queue)
    user = queue.submit(lambda j: threading.current_thread(), name="user", priority=USER)
    live = queue.submit(lambda j: threading.current_thread(), name="live", priority=INTERACTIVE)
    assert live.wait(WAIT) and live.state == "done"        # the blocker still holds the worker
    assert user.state == "queued" and blocker.state == "running"
    release.set()
    assert user.wait(WAIT) and user.state == "done"
    assert user.result is not live.result                  # the worker, not the extra thread


def test_a_cancelled_queued_job_never_starts_and_a_running_one_stops() -> None:
    queue = JobQueue("test-cancel")
    ran: list[str] = []
    blocker, release = _blocker(queue)
    queued = queue.submit(lambda j: ran.append("queued"), name="queued")
    queued.cancel()
    step = threading.Event()

    def long(job):
        for i in range(1000):
            if i == 3:
                step.set()
            job.check()
            job.progress(i, 1000)
            if i >= 3:
                job._cancel.wait(WAIT)   # stands for work between checks
        ran.append("finished")
    seen: list[tuple[int, int]] = []
    running = queue.submit(long, name="long", on_progress=lambda d, t: seen.append((d, t)))
    release.set()
    assert step.wait(WAIT)
    running.cancel()
    assert running.wait(WAIT) and queued.wait(WAIT)
    assert queued.state == "cancelled" and running.state == "cancelled"
    assert "queued" not in ran and "finished" not in ran
    assert seen[:4] == [(0, 1000), (1, 1000), (2, 1000), (3, 1000)]


def test_errors_reach_on_error_and_the_queue_keeps_serving() -> None:
    queue = JobQueue("test-errors")
    errors: list[BaseException] = []
    results: list[int] = []

    def boom(job):
        raise ValueError("bad cell")
    failed = queue.submit(boom, on_error=errors.append)
    ok = queue.submit(lambda j: 42, on_done=results.append)
    assert failed.wait(WAIT) and ok.wait(WAIT)
    assert failed.state == "failed" and isinstance(errors[0], ValueError)
    assert results == [42]


def test_check_raises_cancelled() -> None:
    queue = JobQueue("test-check")
    job = queue.submit(lambda j: None)
    job.wait(WAIT)
    job.cancel()
    with pytest.raises(Cancelled):
        job.check()


def test_priority_lock_goes_to_the_highest_waiter() -> None:
    lock = PriorityLock()
    order: list[str] = []
    lock.acquire()                      # held, so both waiters queue up
    waiting = threading.Barrier(3)

    def take(name: str, priority: int) -> None:
        waiting.wait(WAIT)
        with lock.hold(priority):
            order.append(name)
    threads = [threading.Thread(target=take, args=("sweep cell", BACKGROUND)),
               threading.Thread(target=take, args=("slider", INTERACTIVE))]
    for t in threads:
        t.start()
    waiting.wait(WAIT)
    # both threads are past the barrier; wait until both are queued on the lock
    for _ in range(10_000):
        if len(lock._waiting) == 2:
            break
        threading.Event().wait(0.001)
    assert len(lock._waiting) == 2
    lock.release()
    for t in threads:
        t.join(WAIT)
    assert order == ["slider", "sweep cell"]
    assert not lock.locked()


def test_a_long_job_does_not_hold_back_another_when_there_are_workers() -> None:
    queue = JobQueue("test-workers", workers=2)
    blocker, release = _blocker(queue)
    quick = queue.submit(lambda j: "quick", name="quick")
    assert quick.wait(WAIT) and quick.result == "quick"    # ran while the blocker still runs
    assert blocker.state == "running"
    release.set()
    assert blocker.wait(WAIT) and blocker.state == "done"
