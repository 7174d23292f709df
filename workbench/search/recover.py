"""`workbench search --recover-minutes M`: recovery training for searched plans that remove
structure, and their WER measured after it.

Pruning or factorizing without training rarely meets a WER budget, so a search with a tight
ΔWER budget keeps mostly quantization plans. With a recovery budget, the plans that remove
structure get their chance: the non-dominated ones among them (WER x size x latency, search-time
numbers, size and latency budgets met; at most `max_plans`, smallest first) are recovered by
distillation from the uncompressed model (`workbench.recovery.recover_plan`, M minutes each),
and the recovered model, quantized as the plan says, is evaluated on the whole eval set. Size
and simulated latency do not change (the structure is the plan's).

Each recovered plan is written as `recovered-NNNN/` (model.safetensors, export_plan.json,
recovery.json): `workbench apply --plan recovered-NNNN/export_plan.json --checkpoint
recovered-NNNN/model.safetensors` exports it.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from workbench.compress import compress
from workbench.evaluate import evaluate
from workbench.plan import CompressionPlan
from workbench.search.front import pareto_indices
from workbench.search.runner import OBJECTIVES, SearchResult, Trial


def candidates(result: SearchResult, model, max_plans: int = 3) -> list[Trial]:
    """Plans that remove structure, non-dominated among themselves, meeting the size and
    latency budgets (the WER budget is what recovery is for); smallest first."""
    from workbench.recovery import removes_structure

    cfg = result.config
    pool = []
    for t in result.trials:
        m = t.measures
        if m is None or t.duplicate_of is not None:
            continue
        if cfg.max_size_bytes is not None and m["size_bytes"] > cfg.max_size_bytes:
            continue
        if cfg.max_latency_ms is not None and m["latency_ms"] > cfg.max_latency_ms:
            continue
        if removes_structure(result.space.plan(t.params), model):
            pool.append(t)
    front = [pool[i] for i in pareto_indices([[t.measures[k] for k in OBJECTIVES]
                                              for t in pool])]
    front.sort(key=lambda t: (t.measures["size_bytes"], t.measures["latency_ms"], t.number))
    return front[:max_plans]


def recover_front(result: SearchResult, model, eval_set, minutes: float, out_dir: Path | str,
                  *, max_plans: int = 3, manifests: Sequence[Path] | None = None,
                  progress: Callable[[str], None] | None = None) -> list[dict[str, Any]]:
    """Recover the candidates (candidates()) for `minutes` each; one record per plan."""
    from workbench.models import load_checkpoint  # looked up per call: tests monkeypatch it
    from workbench.recovery import DEFAULT_CONFIG, recover_plan

    out = Path(out_dir)
    cfg = replace(DEFAULT_CONFIG, max_minutes=float(minutes))
    baseline = evaluate(model, eval_set)
    budget = result.config.max_delta_wer
    records = []
    for t in candidates(result, model, max_plans):
        plan = result.space.plan(t.params)
        folder = out / f"recovered-{t.number:04d}"
        if progress is not None:
            progress(f"recovering trial {t.number} for {minutes:g} min -> {folder}")
        rec = recover_plan(plan, model, out_dir=folder, config=cfg,
                           manifests=list(manifests) if manifests else None, progress=False,
                           evaluate_sets=False)
        export_plan = CompressionPlan.from_json(Path(rec.export_plan).read_text())
        recovered = load_checkpoint(rec.checkpoint)
        after = evaluate(compress(recovered, export_plan) if export_plan.layers else recovered,
                         eval_set)
        before = t.final or t.measures
        delta = after.wer - baseline.wer
        records.append({
            "trial": t.number, "folder": str(folder), "checkpoint": str(rec.checkpoint),
            "export_plan": str(rec.export_plan), "minutes": float(minutes),
            "steps": rec.report.get("steps"),
            "wer_before": before["wer"], "wer_before_kind": before["kind"],
            "wer_after": round(after.wer, 6), "wer_delta_after": round(delta, 6),
            "utterances": len(eval_set),
            "size_bytes": before["size_bytes"], "latency_ms": before["latency_ms"],
            "meets_budgets": budget is None or delta <= budget + 1e-12,
            "numbers": "WER after recovery measured on every utterance of the eval set "
                       "(greedy CTC), the plan's quantization applied; size and latency as "
                       "searched (recovery keeps the structure)"})
    return records
