"""One call for a whole search (used by the CLI, the bench and the dashboard), and its files.

    result = search(spec, config, space_options={"bits": (8, 4)}, executor="ray",
                    out_dir=Path("plans"))
    plans/trials.jsonl      every finished evaluation, appended as it finishes (--resume reads it)
    plans/plan-0012.json    each front plan (a CompressionPlan file `workbench apply` takes)
    plans/front.json        the front with its measured numbers, the reference plan, the best plan
"""
from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from workbench.errors import WorkbenchError
from workbench.search.objective import EvaluatorSpec
from workbench.search.runner import OBJECTIVES, SearchConfig, SearchResult, Trial, run_search
from workbench.search.space import SearchSpace


def make_executor(kind: str, spec: EvaluatorSpec, space: SearchSpace, *, model=None,
                  address: str | None = None, workers: int = 2, evaluator=None):
    from workbench.search.executors import RayExecutor, SerialExecutor
    if kind == "serial":
        if evaluator is None and model is not None:
            evaluator = spec.build(model=model)
        return SerialExecutor(spec, space, evaluator)
    if kind == "ray":
        return RayExecutor(spec, space, address=address, workers=workers)
    raise WorkbenchError(f"--executor: '{kind}' is not an executor; use 'ray' or 'serial'.")


def search(spec: EvaluatorSpec, config: SearchConfig, *, space: SearchSpace | None = None,
           space_options: dict[str, Any] | None = None, executor: str = "serial",
           address: str | None = None, workers: int = 2, out_dir: Path | str | None = None,
           resume: bool = False, cancel: Callable[[], bool] = lambda: False,
           progress: Callable[[int, int, str], None] | None = None,
           evaluator=None, recover_minutes: float | None = None, recover_plans: int = 3,
           recover_manifests=None) -> SearchResult:
    """Build the space from the model, run the search on `executor`, write the files.

    recover_minutes: also recover (distill) up to `recover_plans` searched plans that remove
    structure, that many minutes each, and measure them (workbench.search.recover); the records
    are in result.recovered and front.json's "recovered". `recover_manifests` with any
    utterance of a held-out set are refused before the search starts (workbench.data.held_out).
    """
    if recover_minutes is not None:
        from workbench.data.held_out import refuse_held_out
        refuse_held_out(recover_manifests, option="recover_manifests")
    model = evaluator.model if evaluator is not None else spec.load_model()
    if space is None:
        space = SearchSpace.for_model(model, **(space_options or {}))
    out = Path(out_dir) if out_dir is not None else None
    ex = make_executor(executor, spec, space, model=model, address=address, workers=workers,
                       evaluator=evaluator)
    try:
        result = run_search(spec.describe(), space, config, ex,
                            log_path=out / "trials.jsonl" if out else None, resume=resume,
                            cancel=cancel, progress=progress)
    finally:
        ex.close()
    if recover_minutes is not None and result.complete:
        from workbench.search.recover import recover_front
        eval_set = evaluator.session.eval_set if evaluator is not None else spec.eval_set
        if eval_set is None:
            from workbench.evaluate import load_eval_set  # looked up per call: tests monkeypatch it
            from workbench.paths import REAL_TEST  # looked up per call: tests monkeypatch it
            eval_set = load_eval_set(spec.manifest or REAL_TEST, limit=spec.limit,
                                     progress=False)
        note = (lambda text: progress(0, 0, text)) if progress is not None else None
        result.recovered = recover_front(result, model, eval_set, recover_minutes,
                                         out if out is not None else Path.cwd(),
                                         max_plans=recover_plans, manifests=recover_manifests,
                                         progress=note)
    if out is not None:
        write_front(result, out)
    return result


def trial_record(result: SearchResult, t: Trial, plan_file: str | None = None) -> dict:
    m = t.best or {}
    return {"trial": t.number, "plan_file": plan_file, "meets_budgets": result.feasible(t),
            "eval": m.get("kind"), "wer": m.get("wer"), "wer_delta": m.get("wer_delta"),
            "wer_stderr": m.get("stderr"), "utterances": m.get("utterances"),
            "size_bytes": m.get("size_bytes"), "latency_ms": m.get("latency_ms"),
            "latency_band_pct": m.get("latency_band_pct"),
            "search_eval": t.measures, "params": t.params}


def summary(result: SearchResult) -> dict:
    """The JSON the CLI prints and front.json holds (without file names)."""
    cfg = result.config
    best = result.best_plan()
    ref = result.reference
    ref_m = ref.best or {}
    if best is None:
        verdict = (f"no plan found in {len(result.trials)} trials meets every budget "
                   f"({_budgets(cfg)}); the front below is the closest. Relax a budget or run "
                   f"more --trials.")
    else:
        smaller = best.best["size_bytes"] < ref_m.get("size_bytes", float("inf"))
        verdict = (f"trial {best.number} meets every budget ({_budgets(cfg)}): "
                   f"{best.best['size_bytes'] / 1e6:.3f} MB, {best.best['latency_ms']:.1f} ms "
                   f"simulated, WER {best.best['wer']:.4f} (ΔWER {best.best['wer_delta']:+.4f}, "
                   f"{best.best['kind']} eval); "
                   + (f"{ref_m['size_bytes'] / best.best['size_bytes']:.2f}x smaller than the "
                      f"reference plan ({ref_m['size_bytes'] / 1e6:.3f} MB)" if smaller else
                      "not smaller than the reference plan"))
    recovered = list(getattr(result, "recovered", None) or [])
    ok = [r for r in recovered if r["meets_budgets"]]
    best_rec = min(ok, key=lambda r: (r["size_bytes"], r["latency_ms"]), default=None)
    if recovered:
        verdict += (f" After {recovered[0]['minutes']:g} min of recovery each, "
                    f"{len(ok)} of {len(recovered)} plans that remove structure meet the "
                    f"budgets" + (f"; the smallest, trial {best_rec['trial']}: "
                                  f"{best_rec['size_bytes'] / 1e6:.3f} MB, ΔWER "
                                  f"{best_rec['wer_delta_after']:+.4f} ({best_rec['folder']})"
                                  if best_rec else "") + ".")
    return {
        "complete": result.complete, "verdict": verdict,
        "recovered": recovered,
        "best_recovered_trial": None if best_rec is None else best_rec["trial"],
        "best_trial": None if best is None else best.number,
        "best_smaller_than_reference": (best is not None and best.best["size_bytes"]
                                        < ref_m.get("size_bytes", float("inf"))),
        "reference": {"trial": ref.number, "what": "the base plan (int8 everywhere unless "
                                                    "--base says otherwise)",
                      **{k: ref_m.get(k) for k in ("kind", "wer", "wer_delta", *OBJECTIVES[1:])}},
        "budgets": {"max_delta_wer": cfg.max_delta_wer, "max_latency_ms": cfg.max_latency_ms,
                    "max_size_bytes": cfg.max_size_bytes},
        "trials": len(result.trials), "evaluated_now": result.evaluated,
        "front_size": len(result.front), "hypervolume": round(result.hypervolume, 6)
        if result.hypervolume == result.hypervolume else None,
        "hypervolume_reference": result.hv_reference,
        "executor": result.executor, "workers": result.workers,
        "wall_s": round(result.wall_s, 2), "startup_s": round(result.startup_s, 2),
        "space": result.space.describe(), "seed": cfg.seed, "batch": cfg.batch,
        "numbers": "WER measured (greedy CTC; 'full' = every utterance of the eval set, 'quick' "
                   "= fixed-subset estimate +- stderr); size exact bytes; latency simulated "
                   "(roofline model, +- latency_band_pct)",
    }


def _budgets(cfg: SearchConfig) -> str:
    parts = []
    if cfg.max_delta_wer is not None:
        parts.append(f"ΔWER <= {cfg.max_delta_wer:g}")
    if cfg.max_latency_ms is not None:
        parts.append(f"latency <= {cfg.max_latency_ms:g} ms")
    if cfg.max_size_bytes is not None:
        parts.append(f"size <= {cfg.max_size_bytes / 1e6:g} MB")
    return ", ".join(parts) or "no budgets"


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_front(result: SearchResult, out_dir: Path | str) -> dict:
    """plan-NNNN.json per front plan, best.json (if any meets the budgets), front.json."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    records = []
    for t in result.front:
        name = f"plan-{t.number:04d}.json"
        _write(out / name, result.space.plan(t.params).to_json())
        records.append(trial_record(result, t, name))
    doc = summary(result)
    best = result.best_plan()
    if best is not None:
        _write(out / "best.json", result.space.plan(best.params).to_json())
        doc["best_plan_file"] = str(out / "best.json")
    doc["front"] = records
    doc["log"] = str(out / "trials.jsonl")
    _write(out / "front.json", json.dumps(doc, indent=2) + "\n")
    return doc
