"""Multi-objective plan search: Optuna's NSGA-II over a SearchSpace, trials on an executor.

    result = run_search(spec, space, SearchConfig(trials=64, batch=8, seed=0,
                        max_delta_wer=0.01), executor=SerialExecutor(spec, space),
                        log_path=Path("plans/trials.jsonl"))
    result.front            # non-dominated feasible trials over (WER, bytes, ms), full-set WER

Determinism (serial and Ray give the same front for a fixed seed): trials are asked from the
sampler in fixed batches, serially, in the driver (ask `batch`, evaluate them in parallel, tell
them in trial order). The sampler only ever sees the same tells in the same order, and each
evaluation is a pure function of the plan (fixed batches, fixed quick subset, fixed threads).
NSGA-II's population size is the batch size, so a generation is one batch.

The log (JSONL) gets one line per finished evaluation, appended and flushed as each finishes, in
completion order. `resume=True` replays the same asks; an asked trial whose result is in the log
is told from the log instead of being evaluated again. Identical plans proposed twice are
evaluated once (the second is told the first's numbers).

Objectives (all minimised): WER (quick estimate during the search), size in bytes (exact),
simulated latency on the device (ms). Budgets are Optuna constraints (ΔWER vs the uncompressed
model, latency, size): NSGA-II prefers feasible trials, then smaller violations. At the end, the
front's plans are evaluated on the full eval set (`final_eval="full"`), and the front is recomputed
from those measured numbers.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from workbench.errors import WorkbenchError
from workbench.search.executors import Job, SearchCancelled
from workbench.search.front import hypervolume, pareto_indices
from workbench.search.space import SearchSpace

OBJECTIVES = ("wer", "size_bytes", "latency_ms")


@dataclass(frozen=True)
class SearchConfig:
    trials: int = 48
    batch: int = 8
    seed: int = 0
    max_delta_wer: float | None = None
    max_latency_ms: float | None = None
    max_size_bytes: int | None = None
    eval_kind: str = "quick"          # objective during the search
    final_eval: str | None = "full"   # re-measure the front with this (None: keep quick numbers)

    def __post_init__(self) -> None:
        if self.trials < 1:
            raise WorkbenchError(f"--trials: must be >= 1, got {self.trials}.")
        if self.batch < 2:
            raise WorkbenchError(f"--batch: NSGA-II needs a population of >= 2, got {self.batch}.")
        for name in ("max_delta_wer", "max_latency_ms", "max_size_bytes"):
            v = getattr(self, name)
            if v is not None and v < 0:
                raise WorkbenchError(f"--{name.replace('_', '-')}: must be >= 0, got {v}.")

    def violations(self, m: dict) -> dict[str, float]:
        """Constraint values (<= 0 is feasible), per budget that is set."""
        out = {}
        if self.max_delta_wer is not None:
            out["delta_wer"] = m["wer_delta"] - self.max_delta_wer
        if self.max_latency_ms is not None:
            out["latency"] = m["latency_ms"] - self.max_latency_ms
        if self.max_size_bytes is not None:
            out["size"] = (m["size_bytes"] - self.max_size_bytes) / 1e6
        return out


@dataclass
class Trial:
    number: int
    params: dict
    measures: dict | None = None        # search-time numbers (eval_kind)
    final: dict | None = None           # final_eval numbers (front only)
    error: str | None = None
    from_log: bool = False
    duplicate_of: int | None = None

    @property
    def best(self) -> dict | None:
        return self.final or self.measures


@dataclass
class SearchResult:
    config: SearchConfig
    space: SearchSpace
    trials: list[Trial]
    front: list[Trial]
    reference: Trial                     # trial 0: the base plan (int8 everywhere by default)
    complete: bool
    executor: str
    workers: int
    wall_s: float
    startup_s: float
    evaluated: int                       # evaluations run in this call (not from the log)
    eval_ms_total: float                 # sum of in-evaluator times of those evaluations
    hypervolume: float = float("nan")
    hv_reference: dict = field(default_factory=dict)
    recovered: list = field(default_factory=list)   # search.recover records (--recover-minutes)

    def feasible(self, t: Trial) -> bool:
        m = t.best
        return m is not None and all(v <= 1e-12 for v in self.config.violations(m).values())

    def best_plan(self) -> Trial | None:
        """The smallest front plan meeting every budget (by its final numbers), else None."""
        ok = [t for t in self.front if self.feasible(t)]
        return min(ok, key=lambda t: (t.best["size_bytes"], t.best["latency_ms"], t.number),
                   default=None)

    def front_summary(self) -> list[dict]:
        return [{"number": t.number, **{k: t.best[k] for k in
                                        ("wer", "wer_delta", "size_bytes", "latency_ms")}}
                for t in self.front]


def _hash_config(space: SearchSpace, config: SearchConfig, spec_desc: dict) -> str:
    text = json.dumps({"space": space.key(), "config": asdict(config), "spec": spec_desc},
                      sort_keys=True)
    return hashlib.sha1(text.encode()).hexdigest()[:16]


class TrialLog:
    """Append-only JSONL: a header, then one line per finished evaluation."""

    def __init__(self, path: Path | None, header: dict, resume: bool) -> None:
        self.path = path
        self.records: dict[tuple[int, str], dict] = {}
        if path is None:
            return
        if path.exists() and path.stat().st_size > 0:
            if not resume:
                raise WorkbenchError(f"{path}: a trial log already exists; pass --resume to "
                                     f"continue it, or choose another --out folder.")
            lines = path.read_text().splitlines()
            try:
                head = json.loads(lines[0])
            except (json.JSONDecodeError, IndexError):
                raise WorkbenchError(f"{path}: line 1 is not a search log header; "
                                     f"remove the file or choose another --out.") from None
            if head.get("config_hash") != header["config_hash"]:
                raise WorkbenchError(
                    f"{path}: logged by a search with other settings (config_hash "
                    f"{head.get('config_hash')} != {header['config_hash']}); --resume needs the "
                    f"same model, eval set, space, seed, batch and budgets.")
            good, torn = [lines[0]], False
            for i, line in enumerate(lines[1:], start=2):
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    if i == len(lines):   # a line cut by a kill: that evaluation is redone
                        torn = True
                        break
                    raise WorkbenchError(f"{path}: line {i} is not JSON; the log is damaged."
                                         ) from None
                good.append(line)
                self.records[(rec["number"], rec["kind"])] = rec
            if torn or not path.read_text().endswith("\n"):
                path.write_text("\n".join(good) + "\n")
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(header) + "\n")

    def get(self, number: int, kind: str) -> dict | None:
        return self.records.get((number, kind))

    def append(self, rec: dict) -> None:
        self.records[(rec["number"], rec["kind"])] = rec
        if self.path is None:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(rec) + "\n")
            f.flush()
            os.fsync(f.fileno())


def _params_key(params: dict) -> str:
    return json.dumps(params, sort_keys=True)


def run_search(spec_desc: dict, space: SearchSpace, config: SearchConfig, executor, *,
               log_path: Path | None = None, resume: bool = False,
               cancel: Callable[[], bool] = lambda: False,
               progress: Callable[[int, int, str], None] | None = None) -> SearchResult:
    """Run (or resume) a search; see the module docstring. `spec_desc` identifies the model and
    eval set in the log header (EvaluatorSpec.describe())."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    t_start = time.perf_counter()
    header = {"type": "header", "config_hash": _hash_config(space, config, spec_desc),
              "config": asdict(config), "space": space.describe(), "spec": spec_desc,
              "objectives": list(OBJECTIVES)}
    log = TrialLog(log_path, header, resume)
    sampler = optuna.samplers.NSGAIISampler(population_size=config.batch, seed=config.seed)
    study = optuna.create_study(directions=["minimize"] * 3, sampler=sampler)
    dists = {g.name: optuna.distributions.CategoricalDistribution(list(g.choices))
             for g in space.genes}
    study.enqueue_trial(space.base_params())   # trial 0: the base plan, the reference to beat
    for params in space.initial_points(config.batch - 1, config.seed):  # sparse first generation
        study.enqueue_trial(params)
    n_total = math.ceil(config.trials / config.batch) * config.batch
    trials: list[Trial] = []
    by_params: dict[str, int] = {}
    evaluated, eval_ms = 0, 0.0
    complete = True
    show = progress or (lambda done, total, note: None)

    def on_done(rec: dict) -> None:
        nonlocal evaluated, eval_ms
        evaluated += 1
        eval_ms += (rec.get("measures") or {}).get("eval_ms", 0.0)
        log.append(rec)
        show(len(log.records), n_total, f"trial {rec['number']}")

    try:
        while len(trials) < n_total:
            asked = [study.ask(dists) for _ in range(config.batch)]
            batch = [Trial(t.number, dict(t.params)) for t in asked]
            jobs = []
            for tr in batch:
                rec = log.get(tr.number, config.eval_kind)
                if rec is not None:
                    if rec["params"] != tr.params:
                        raise WorkbenchError(
                            f"{log_path}: trial {tr.number} in the log has other settings than "
                            f"this run asks for; the log is from another search.")
                    tr.measures, tr.error, tr.from_log = rec.get("measures"), rec.get("error"), True
                elif _params_key(tr.params) in by_params:
                    tr.duplicate_of = by_params[_params_key(tr.params)]
                else:
                    jobs.append(Job(tr.number, tr.params, config.eval_kind))
                by_params.setdefault(_params_key(tr.params), tr.number)
            results = {r["number"]: r for r in executor.run(jobs, on_done, cancel)}
            for tr in batch:
                if tr.number in results:
                    r = results[tr.number]
                    tr.measures, tr.error = r.get("measures"), r.get("error")
            known = {t.number: t for t in trials + batch}
            for tr, ot in zip(batch, asked):   # tell in trial order
                if tr.duplicate_of is not None:
                    src = known[tr.duplicate_of]
                    tr.measures, tr.error = src.measures, src.error
                if tr.measures is None:
                    study.tell(ot, state=optuna.trial.TrialState.FAIL)
                    continue
                for name, v in config.violations(tr.measures).items():
                    ot.set_constraint(name, v)
                study.tell(ot, [tr.measures[k] for k in OBJECTIVES])
            trials += batch
            show(len(trials), n_total, f"generation {len(trials) // config.batch} told")
    except SearchCancelled:
        complete = False

    front = _front(trials, config)
    if complete and config.final_eval and config.final_eval != config.eval_kind and front:
        # Measure the front on the full set (logged too, so --resume skips them).
        jobs, pending = [], {}
        for t in front:
            rec = log.get(t.number, config.final_eval)
            if rec is not None:
                t.final = rec.get("measures")
            else:
                jobs.append(Job(t.number, t.params, config.final_eval))
                pending[t.number] = t
        try:
            for r in executor.run(jobs, on_done, cancel):
                pending[r["number"]].final = r.get("measures")
        except SearchCancelled:
            complete = False
        measured = [t for t in front if t.final is not None]
        pool = [t for t in measured if _ok(config, t.final)] or measured
        front = [pool[i] for i in pareto_indices([[t.final[k] for k in OBJECTIVES]
                                                  for t in pool])]
    reference = trials[0] if trials else Trial(0, space.base_params())
    result = SearchResult(config, space, trials, front, reference, complete, executor.name,
                          getattr(executor, "workers", 1), time.perf_counter() - t_start,
                          getattr(executor, "startup_s", 0.0), evaluated, eval_ms)
    result.hv_reference, result.hypervolume = _hypervolume(result)
    return result


def _ok(config: SearchConfig, m: dict | None) -> bool:
    return m is not None and all(v <= 1e-12 for v in config.violations(m).values())


def _front(trials: list[Trial], config: SearchConfig) -> list[Trial]:
    """Non-dominated trials among the feasible ones (all trials if none is feasible); one per plan."""
    done = [t for t in trials if t.measures is not None and t.duplicate_of is None]
    feasible = [t for t in done if _ok(config, t.measures)]
    pool = feasible or done
    idx = pareto_indices([[t.measures[k] for k in OBJECTIVES] for t in pool])
    return [pool[i] for i in idx]


def _hypervolume(result: SearchResult) -> tuple[dict, float]:
    """Hypervolume of the front, each objective divided by the reference plan's value (trial 0,
    the base plan) and bounded by 1.1 x it: 0 = no gain over the base plan anywhere."""
    ref = result.reference.best
    pts = [t.best for t in result.front if t.best is not None]
    if not ref or not pts:
        return {}, float("nan")
    scale = {k: max(ref[k], 1e-12) for k in OBJECTIVES}
    norm = [[p[k] / scale[k] for k in OBJECTIVES] for p in pts]
    return ({"point": {k: round(1.1 * ref[k], 6) for k in OBJECTIVES},
             "normalised_by": "the reference plan (trial 0)"},
            hypervolume(norm, [1.1, 1.1, 1.1]))


def print_progress(done: int, total: int, note: str) -> None:
    sys.stderr.write(f"\rsearch: {done}/{total} {note:<28}")
    sys.stderr.flush()
