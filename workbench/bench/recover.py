"""`workbench bench recover --json`: recovery and architecture swaps on the demo model, measured.

Cases (issue 14), each recovered by distillation from the demo for the same wall-clock budget
(`--minutes`, default 20) on the recovery corpus (never the held-out sets):

    a_progressive   50 % FFN neurons + 2/6 heads in every block, pruned progressively while
                    distilling (cubic schedule, Taylor importance re-scored between events)
    b_oneshot       the same shapes pruned one-shot (magnitude), then distilled
    c_qat4          4-bit weights everywhere (per-block), quantization-aware recovery
    d_windowed      windowed attention (1 s each side) in every block
    e_linear        linear attention (elu + 1) in every block

Per case: greedy WER of the baseline, of the compressed model before and after recovery on both
held-out sets (real_test, synth_test), minutes and steps, parameters, the ORT export's WER next to
the simulated one, and ORT ms (1 thread, median of interleaved rounds) at 5 s and 30 s of audio
next to the unswapped fp32 export, with the host latency model's predicted ratio for the plan as
exported (structure, swaps and the quantization ORT applies; its source and band; null with the
reason where it cannot price a setting). Recovery results are cached by plan + recipe
(workbench.recovery), so a re-run only re-measures.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import torch

from workbench.compress.progressive import ProgressiveConfig
from workbench.compress.recover import RecoverConfig
from workbench.plan import CompressionPlan, LayerConfig, PruneConfig, QuantConfig

CASES = ("a_progressive", "b_oneshot", "c_qat4", "d_windowed", "e_linear")
#: Audio lengths of the ORT timing (seconds): a typical prompt, and Whisper's full 30 s window.
SECONDS = (5.0, 30.0)


def case_plan(name: str) -> tuple[CompressionPlan, dict[str, Any]]:
    """(plan, recover_plan keyword arguments) of one case."""
    prune = (CompressionPlan()
             .with_group("ffn", LayerConfig(prune=PruneConfig(amount=0.5, structure="neurons")))
             .with_group("attention", LayerConfig(prune=PruneConfig(amount=2 / 6,
                                                                    structure="heads"))))
    if name == "a_progressive":
        return prune, {"progressive": ProgressiveConfig(importance="taylor")}
    if name == "b_oneshot":
        return prune, {}
    if name == "c_qat4":
        return CompressionPlan(default=LayerConfig(quant=QuantConfig(
            weight_bits=4, granularity="per_block"))), {"qat": True}
    if name == "d_windowed":
        return CompressionPlan().with_group("attention", LayerConfig(
            windowed_attention={"window_s": 1.0})), {}
    if name == "e_linear":
        return CompressionPlan().with_group("attention", LayerConfig(linear_attention={})), {}
    raise ValueError(f"unknown case {name!r}; cases: {', '.join(CASES)}")


def _log(msg: str) -> None:
    print(f"[bench recover] {msg}", file=sys.stderr, flush=True)


def _predicted(teacher, plan: CompressionPlan, seconds: float, measured: float) -> dict[str, Any]:
    """The host latency model's speed-up for the plan as exported (structure, swaps and the
    quantization the export applies), next to the measured one; null with the reason when
    the model cannot price a setting as the runtime runs it (simulated, not measured)."""
    from workbench.latency import predict_latency
    base = predict_latency(teacher, "host", seconds)
    case = predict_latency(teacher, "host", seconds, plan)
    out: dict[str, Any] = {"predicted_source": case.source,
                           "predicted_band_pct": round(case.error_band_pct, 1)}
    if case.unsupported:
        return {**out, "predicted_speedup": None, "prediction_error_pct": None,
                "predicted_null_reason": "; ".join(case.unsupported)}
    pred = base.total_ms / case.total_ms
    return {**out, "predicted_speedup": round(pred, 3),
            "prediction_error_pct": round(100 * (pred / measured - 1), 1)}


def export_parity(result: Any, sets: dict[str, Any]) -> tuple[Any, dict, dict]:
    """A `recover_plan` result exported with its plan's quantization, and its greedy WER per
    held-out set simulated (PyTorch) and in ONNX Runtime: (export, sim_wer, ort_wer)."""
    from workbench.evaluate import evaluate
    from workbench.export.pipeline import build_export
    from workbench.export.verify import evaluate_ort
    from workbench.models import load_checkpoint
    from workbench.onnx_tools.runtime import make_session

    model = load_checkpoint(result.checkpoint)
    rest = CompressionPlan.from_json(Path(result.export_plan).read_text())
    export = build_export(model, rest, force=True)
    sim = {k: round(evaluate(export.sim, s).wer, 4) for k, s in sets.items()}
    session = make_session(export.model)
    ort = {k: round(evaluate_ort(session, s).wer, 4) for k, s in sets.items()}
    return export, sim, ort


def bench_recover(minutes: float = 20.0, steps: int | None = None,
                  cases: tuple[str, ...] = CASES, manifests: list[Path] | None = None,
                  time_repeats: int = 5) -> dict[str, Any]:
    from workbench.models import load_demo
    from workbench.onnx_tools.exporter import export_fp32, to_bytes
    from workbench.onnx_tools.runtime import time_interleaved
    from workbench.recovery import _held_out_sets, recover_plan

    teacher = load_demo()
    sets = _held_out_sets()
    cfg = RecoverConfig(steps=steps or 400, lr=5e-4, warmup=30, max_batch_frames=12_000,
                        max_minutes=minutes)
    base_onnx = to_bytes(export_fp32(teacher))
    out: dict[str, Any] = {"minutes_budget": minutes, "steps_max": cfg.steps,
                           "threads": torch.get_num_threads(), "cases": {}}
    start = time.perf_counter()
    for name in cases:
        plan, kwargs = case_plan(name)
        _log(f"{name}: recovering ({minutes:g} min budget)")
        result = recover_plan(plan, teacher, config=cfg, manifests=manifests, progress=False,
                              **kwargs)
        r = result.report
        export, sim_wer, ort_wer = export_parity(result, sets)
        jobs = [((key, s), blob, s) for key, blob in (("base", base_onnx),
                                                      ("case", export.model))
                for s in SECONDS]
        times = time_interleaved(jobs, repeats=time_repeats)
        timing = {}
        for s in SECONDS:
            base_ms, case_ms = times.by_job[("base", s)].ms, times.by_job[("case", s)].ms
            timing[f"{s:g}s"] = {"base_ms": round(base_ms, 2), "case_ms": round(case_ms, 2),
                                 "speedup": round(base_ms / case_ms, 3),
                                 **_predicted(teacher, plan, s, base_ms / case_ms)}
        out["cases"][name] = {
            "baseline_wer": r["teacher_greedy_wer"], "wer_before": r["greedy_wer_before"],
            "wer_after": r["greedy_wer_after"],
            "wer_after_quantized": r.get("greedy_wer_after_quantized") or None,
            "minutes": r.get("minutes"), "steps": r["steps"],
            "params": r["params"],
            "params_ratio": round(r["params"]["recovered"] / r["params"]["teacher"], 4),
            "wer_sim_export": sim_wer, "wer_ort": ort_wer,
            "ort_minus_sim": {k: round(ort_wer[k] - sim_wer[k], 4) for k in sim_wer},
            "ort": timing, "load": [times.load_before, times.load_after],
            "checkpoint": str(result.checkpoint),
        }
        _log(f"{name}: after {r['greedy_wer_after']}, ORT {ort_wer}, 30 s x"
             f"{timing['30s']['speedup']}")
    out["seconds"] = round(time.perf_counter() - start, 1)
    return out
