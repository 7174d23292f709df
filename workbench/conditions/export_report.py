"""The conditions grid measured on an exported ONNX model (for `workbench apply --conditions`).

Same degraded features as `evaluate_conditions` (the shared feature cache), transcribed by the
ONNX Runtime session of the deliverable, beside the PyTorch simulation of the plan and the
uncompressed model: report["conditions"] and the model card's "Accuracy by condition".
"""
from __future__ import annotations

from pathlib import Path
from typing import Any


def conditions_report(ort_session: Any, sim, original, grid: str, manifest: Path,
                      seed: int = 0) -> dict[str, Any]:
    from workbench.conditions import condition_sets
    from workbench.evaluate import evaluate
    from workbench.export.verify import evaluate_ort

    sets, stats = condition_sets(grid, manifest, seed=seed, progress=False)
    rows = []
    for cond, es in sets:
        ort_eval = evaluate_ort(ort_session, es)
        sim_eval = evaluate(sim, es)
        base = evaluate(original, es)
        rows.append({"condition": cond.name, "utterances": len(es),
                     "wer_ort": round(ort_eval.wer, 4), "cer_ort": round(ort_eval.cer, 4),
                     "wer_sim": round(sim_eval.wer, 4),
                     "wer_uncompressed": round(base.wer, 4),
                     "cer_uncompressed": round(base.cer, 4)})
    return {"grid": grid, "set": Path(manifest).parent.name, "seed": seed, "rows": rows,
            "skipped": list(stats["skipped"]),
            "source": "measured: greedy CTC of the ONNX model (onnxruntime), the PyTorch "
                      "simulation and the uncompressed model on seeded degraded copies of the "
                      "set (workbench.conditions)"}


def card_section(report: dict[str, Any]) -> str:
    """Markdown for the model card: the table, or how to get it."""
    cond = report.get("conditions")
    if not cond:
        return ("Not measured in this export: run `workbench apply ... --conditions` (default "
                "grid: noise at several SNRs incl. babble and music on hold, rooms, speed, "
                "telephone band, 8 kHz mu-law), or `workbench eval --conditions --plan plan.json`.")
    lines = [f"WER / CER (%) on `{cond['set']}` under each condition (seed {cond['seed']}; "
             f"{cond['source']}).", "",
             "| condition | utterances | WER (ONNX) | CER (ONNX) | WER simulated | "
             "WER uncompressed | change vs uncompressed (pp) |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for r in cond["rows"]:
        lines.append(f"| {r['condition']} | {r['utterances']} | {100 * r['wer_ort']:.1f} | "
                     f"{100 * r['cer_ort']:.1f} | {100 * r['wer_sim']:.1f} | "
                     f"{100 * r['wer_uncompressed']:.1f} | "
                     f"{100 * (r['wer_ort'] - r['wer_uncompressed']):+.1f} |")
    if cond.get("skipped"):
        lines += ["", f"Skipped (source missing on the export machine): "
                      f"{', '.join(cond['skipped'])}."]
    return "\n".join(lines)
