"""Where trials run: in this process (serial) or on Ray (embedded local, or a cluster).

Both take a batch of jobs and return their results in job order, calling `on_done` for each
result as soon as it exists (the runner appends it to the trial log there). Ray is imported only
here, only when a RayExecutor is created: `import workbench` never loads it.

Fault tolerance on Ray: each job is a task with `max_retries`; when a worker process or a whole
node dies, Ray re-runs the job elsewhere. Results already returned live in the driver (small
objects are inlined there), and the runner has logged them, so no finished trial is lost.
"""
from __future__ import annotations

import os
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from workbench.errors import WorkbenchError
from workbench.plan import CompressionPlan
from workbench.search.objective import EvaluatorSpec, PlanEvaluator, evaluator_for
from workbench.search.space import SearchSpace


class RayStartError(WorkbenchError):
    """The embedded local Ray did not start (the CLI then falls back to serial)."""


class SearchCancelled(Exception):
    """The caller cancelled the search; finished trials are in the log."""


@dataclass(frozen=True)
class Job:
    number: int          # trial number (the same in every run with the same seed)
    params: dict
    kind: str            # "quick" | "full"


def run_job(evaluator: PlanEvaluator, space: SearchSpace, job: Job,
            cancel: Callable[[], bool] | None = None) -> dict[str, Any]:
    """Evaluate one job; a bad plan is a failed trial (its error recorded), not a crash."""
    out: dict[str, Any] = {"number": job.number, "kind": job.kind, "params": job.params,
                           "pid": os.getpid()}
    try:
        plan = space.plan(job.params)
        out["measures"] = evaluator(plan, job.kind, cancel=cancel).to_dict()
    except WorkbenchError as err:
        out["error"] = f"{type(err).__name__}: {err}"
    except Exception as err:  # noqa: BLE001 - recorded as a failed trial, with its trace
        if type(err).__name__ == "Cancelled":
            raise SearchCancelled() from err
        out["error"] = f"{type(err).__name__}: {err}\n{traceback.format_exc(limit=3)}"
    return out


class SerialExecutor:
    """Runs jobs one by one in this process, with `evaluator` (built from the spec if None)."""

    name = "serial"
    workers = 1

    def __init__(self, spec: EvaluatorSpec | None, space: SearchSpace,
                 evaluator: PlanEvaluator | None = None) -> None:
        if evaluator is None and spec is None:
            raise ValueError("SerialExecutor needs a spec or an evaluator")
        self.spec, self.space = spec, space
        self._evaluator = evaluator
        self.startup_s = 0.0

    @property
    def evaluator(self) -> PlanEvaluator:
        if self._evaluator is None:
            t = time.perf_counter()
            self._evaluator = evaluator_for(self.spec)
            self.startup_s = time.perf_counter() - t
        return self._evaluator

    def run(self, jobs: Sequence[Job], on_done: Callable[[dict], None],
            cancel: Callable[[], bool] = lambda: False) -> list[dict]:
        results = []
        for job in jobs:
            if cancel():
                raise SearchCancelled()
            result = run_job(self.evaluator, self.space, job, cancel)
            on_done(result)
            results.append(result)
        return results

    def close(self) -> None:
        pass


def _remote_job(spec: EvaluatorSpec, space: SearchSpace, job: Job) -> dict[str, Any]:
    return run_job(evaluator_for(spec), space, job)


def _remote_plan(spec: EvaluatorSpec, plan_json: str, kind: str) -> dict[str, Any]:
    """One sweep cell on a worker: the plan travels as its JSON (plain data)."""
    return evaluator_for(spec)(CompressionPlan.from_json(plan_json), kind).to_dict()


def _warm(spec: EvaluatorSpec) -> int:
    evaluator_for(spec)
    return os.getpid()


#: Environment for the Ray processes we start: no usage stats; and a patient agent start-up (the
#: raylet waits 15 s by default for its Python agents, which a busy 2-core machine can exceed).
START_ATTEMPTS = 3
RAY_ENV = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_agent_register_timeout_ms": "180000"}


class RayExecutor:
    """Runs jobs as Ray tasks (one CPU each). `address=None` starts an embedded local Ray with
    `workers` CPUs and stops it on close(); an address ("127.0.0.1:6379", "auto") joins a
    cluster, which is left running."""

    name = "ray"

    def __init__(self, spec: EvaluatorSpec, space: SearchSpace | None, *,
                 address: str | None = None,
                 workers: int = 2, max_retries: int = 3) -> None:
        try:
            import ray
        except ImportError:  # pragma: no cover - ray is pinned in requirements.txt
            raise WorkbenchError("--executor ray: ray is not installed; pip install "
                                 "ray==2.60.0, or use --executor serial.") from None
        self.ray = ray
        self.spec, self.space, self.address = spec, space, address
        t = time.perf_counter()
        self._own = not ray.is_initialized()
        if self._own:
            for name, value in RAY_ENV.items():
                os.environ.setdefault(name, value)
            kwargs: dict[str, Any] = dict(include_dashboard=False, log_to_driver=False,
                                          logging_level="ERROR", configure_logging=False)
            if address is None:
                kwargs.update(address="local", num_cpus=workers,
                              object_store_memory=200 * 1024 * 1024)
            else:
                kwargs.update(address=address)
            for attempt in range(START_ATTEMPTS):
                try:
                    ray.init(**kwargs)
                    break
                except (ConnectionError, RuntimeError, ValueError) as err:
                    raise WorkbenchError(
                        f"--address {address}: cannot join a Ray cluster there "
                        f"({str(err).splitlines()[0]}); start one with `ray start --head`, or "
                        f"leave --address out for a local Ray.") from None
                except Exception as err:  # noqa: BLE001 - Ray raises a bare Exception here
                    # "The current node timed out during startup": on a loaded machine the
                    # raylet can give up on its agents (a fixed 15 s); a second start usually
                    # finds the imports in the page cache.
                    if "timed out during startup" not in str(err) or attempt + 1 == START_ATTEMPTS:
                        raise RayStartError(f"ray: Ray did not start ({err}); the "
                                             f"machine may be overloaded; retry, or use "
                                             f"--executor serial.") from None
                    ray.shutdown()
        self.workers = int(ray.cluster_resources().get("CPU", workers))
        self._max_retries = max_retries
        self._task = ray.remote(num_cpus=1, max_retries=max_retries)(_remote_job)
        self._spec_ref = ray.put(spec)
        self._space_ref = ray.put(space)
        # Build the evaluators on every worker before timing trials (model + Session, once).
        warm = ray.remote(num_cpus=1, max_retries=max_retries)(_warm)
        ray.get([warm.remote(self._spec_ref) for _ in range(self.workers)])
        self.startup_s = time.perf_counter() - t

    def run(self, jobs: Sequence[Job], on_done: Callable[[dict], None],
            cancel: Callable[[], bool] = lambda: False) -> list[dict]:
        refs = [self._task.remote(self._spec_ref, self._space_ref, job) for job in jobs]
        return self._gather(refs, lambda i, result: on_done(result), cancel)

    def map_plans(self, plans: Sequence[Any], kind: str,
                  on_done: Callable[[int, dict], None] = lambda i, m: None,
                  cancel: Callable[[], bool] = lambda: False) -> list[dict]:
        """Measures (as dicts) of each plan, in order; `on_done(index, measures)` as each
        finishes (a sweep's cells: no sampler, so no batches; Ray retries a lost task)."""
        ray = self.ray
        task = ray.remote(num_cpus=1, max_retries=self._max_retries)(_remote_plan)
        refs = [task.remote(self._spec_ref, plan.to_json(), kind) for plan in plans]
        return self._gather(refs, on_done, cancel)

    def _gather(self, refs: list, on_done: Callable[[int, dict], None],
                cancel: Callable[[], bool]) -> list[dict]:
        """Results of `refs` in order; `on_done(index, result)` as each finishes. Cancelling
        asks Ray to cancel what is still pending (polled every 0.5 s) and raises."""
        ray = self.ray
        index = {ref: i for i, ref in enumerate(refs)}
        results: list[dict | None] = [None] * len(refs)
        pending = list(refs)
        while pending:
            if cancel():
                for ref in pending:
                    ray.cancel(ref, force=False)
                raise SearchCancelled()
            done, pending = ray.wait(pending, num_returns=1, timeout=0.5)
            for ref in done:
                results[index[ref]] = ray.get(ref)
                on_done(index[ref], results[index[ref]])
        return results  # type: ignore[return-value]

    def close(self) -> None:
        if self._own and self.ray.is_initialized():
            self.ray.shutdown()
