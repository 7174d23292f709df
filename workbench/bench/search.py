"""`workbench bench search --json`: a fixed, budgeted search on the demo model, serial vs Ray.

Runs the same search (seed, trials, batch, budgets) twice: serially in this process (2 torch
threads) and on an embedded local Ray with 2 workers (1 thread each), and reports front size,
hypervolume, trials/s of each, Ray's start-up time, and overhead per trial:

    overhead_per_trial_ms = (search wall time x workers - sum of in-evaluator times) / evaluations

i.e. worker time not spent evaluating plans (sampler, plan building, logging, and for Ray the
scheduling and transfer); the Ray figure minus the serial one is what Ray itself costs. Start-up
(Ray + one evaluator per worker: model load and baseline evaluation) is reported separately.
"""
from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path


def _run(executor: str, trials: int, batch: int, seed: int, threads: int, workers: int) -> dict:
    from workbench.search.api import search
    from workbench.search.objective import EvaluatorSpec
    from workbench.search.runner import SearchConfig, print_progress

    spec = EvaluatorSpec(device="rpi5", audio_seconds=8.0, threads=threads)
    config = SearchConfig(trials=trials, batch=batch, seed=seed, max_delta_wer=0.01)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        result = search(spec, config, executor=executor, workers=workers, out_dir=Path(tmp),
                        progress=print_progress)
    total = time.perf_counter() - t0
    sys.stderr.write("\n")
    search_s = result.wall_s - (result.startup_s if executor == "ray" else 0.0)
    n = max(result.evaluated, 1)
    best = result.best_plan()
    return {
        "executor": executor, "workers": result.workers, "threads_per_evaluation": threads,
        "trials": len(result.trials), "evaluations": result.evaluated,
        # serial: model load + Session (baseline WER) in this process; ray: Ray start + the same
        # on every worker.
        "startup_s": round(result.startup_s if executor == "ray" else total - result.wall_s, 2),
        "search_s": round(search_s, 2),
        "total_s": round(total, 2),
        "trials_per_s": round(len(result.trials) / search_s, 3),
        "evaluations_per_s": round(result.evaluated / search_s, 3),
        "eval_ms_mean": round(result.eval_ms_total / n, 1),
        "overhead_per_trial_ms": round((search_s * result.workers * 1e3 - result.eval_ms_total)
                                       / n, 1),
        "front_size": len(result.front), "hypervolume": round(result.hypervolume, 6),
        "front": [(t.number, round(t.best["wer"], 5), t.best["size_bytes"],
                   round(t.best["latency_ms"], 3)) for t in result.front],
        "best_trial": None if best is None else best.number,
        "best_size_bytes": None if best is None else best.best["size_bytes"],
        "reference_size_bytes": (result.reference.best or {}).get("size_bytes"),
    }


def bench_search(trials: int = 32, batch: int = 8, seed: int = 0, ray: bool = True) -> dict:
    load_start = [round(x, 2) for x in os.getloadavg()]
    serial = _run("serial", trials, batch, seed, threads=2, workers=1)
    out = {"what": f"NSGA-II search on the demo model: {trials} trials, batch {batch}, seed "
                   f"{seed}, --device rpi5 --max-delta-wer 0.01, quick WER during the search, "
                   f"front re-measured on the full eval set",
           "load_average_at_start": load_start,
           "serial": serial}
    if ray:
        from workbench.search.executors import RayStartError
        try:
            r = _run("ray", trials, batch, seed, threads=1, workers=2)
        except RayStartError as err:  # an overloaded machine: say so instead of a traceback
            out["ray_local_2_workers"] = {"error": str(err)}
            r = None
    if ray and r is not None:
        out["ray_local_2_workers"] = r
        out["same_front_as_serial"] = r["front"] == serial["front"]
        out["speedup_ray_vs_serial"] = round(r["trials_per_s"] / serial["trials_per_s"], 2)
        out["ray_overhead_per_trial_ms"] = round(r["overhead_per_trial_ms"]
                                                 - serial["overhead_per_trial_ms"], 1)
    out["front_size"] = serial["front_size"]
    out["hypervolume"] = serial["hypervolume"]
    out["definition"] = ("hypervolume: of the front with each objective (WER, bytes, simulated "
                         "ms) divided by the reference plan's (int8 everywhere), bounded by 1.1; "
                         "overhead_per_trial_ms: see workbench/bench/search.py")
    out["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    return out
