"""`workbench bench recover --json`: recovery and architecture swaps on the demo model, measured.

Cases (issue 14), each recovered by distillation from the demo for the same wall-clock budget
(`--minutes`, default 20) on the recovery corpus (never the held-out sets):

    a_progressive   50 % FFN neurons + 2/6 heads in every block, pruned progressively while
                    distilling (cubic schedule, Taylor importance re-scored between events)
    b_oneshot       the same shapes pruned one-shot (magnitude), then distilled
    c_qat4          4-bit weights (per-block) everywhere but the front-end and the CTC head
                    (int8): presets.int4_everywhere, quantization-aware recovery
    d_windowed      windowed attention (1 s each side) in every block
    e_linear        linear attention (elu + 1): in every block, and in each block set of
                    `linear_sets` (default: block 1 alone, the set `bench linear-blocks` chose on
                    the recovery corpus' validation split, and blocks 1 and 2, the next set it
                    grew; every block at once is ~1.0 WER before recovery). One row per set:
                    "e_linear" (every block), "e_linear_blocks_1", "e_linear_blocks_1_2"

Per case: greedy WER of the baseline, of the compressed model before and after recovery on both
held-out sets (real_test, synth_test; with quantization, "_quantized": the model as quantized,
the figure that counts for c_qat4), minutes and steps, parameters, the ORT export's WER next to
the simulated one (and any layer the export runs differently from the plan, export_inexact),
and ORT ms (1 thread, median of interleaved rounds) at 5 s and 30 s of audio next to the
unswapped fp32 export, with the host latency model's predicted ratio for the plan as
exported (structure, swaps and the quantization ORT applies; its source and band; null with the
reason where it cannot price a setting; the top-level "host_profile" says whether `workbench
calibrate` ran here: uncalibrated predictions are nominal, and a line on stderr says so).
Recovery results are cached by plan + recipe (workbench.recovery), so a re-run only re-measures;
a row from the cache says "recovery_cached": true and when its checkpoint was written, since its
minutes and steps were spent then, at another load.
"""
from __future__ import annotations

import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from workbench.compress.progressive import ProgressiveConfig
from workbench.compress.distill import RecoverConfig
from workbench import presets
from workbench.data.held_out import refuse_held_out
from workbench.errors import ArgumentError
from workbench.plan import CompressionPlan, LayerConfig, PruneConfig
from workbench.evaluate import evaluate
from workbench.latency import load_device, predict_latency

CASES = ("a_progressive", "b_oneshot", "c_qat4", "d_windowed", "e_linear")
#: Audio lengths of the ORT timing (seconds): a typical prompt, and Whisper's full 30 s window.
SECONDS = (5.0, 30.0)
#: Block sets of case e_linear besides every block (None): block 1 alone, the best set `workbench
#: bench linear-blocks` found (chosen on the recovery corpus' validation split, never the
#: held-out sets), and blocks 1 and 2, the next set it grew: on 2026-12-03 block 1 recovered to
#: 0.295 real WER at 1.20x (30 s), blocks 1 and 2 to 0.349 at 1.41x (README). Pass
#: `linear_sets` (CLI: --blocks) to measure others.
LINEAR_SETS: tuple[tuple[int, ...] | None, ...] = (None, (1,), (1, 2))


def case_plan(name: str, blocks: Sequence[int] | None = None
              ) -> tuple[CompressionPlan, dict[str, Any]]:
    """(plan, recover_plan keyword arguments) of one case; `blocks`: e_linear only, the blocks
    whose attention is swapped (None: every block)."""
    if blocks is not None and name != "e_linear":
        raise ValueError(f"case {name!r} takes no block set (only e_linear does)")
    prune = (CompressionPlan()
             .with_group("ffn", LayerConfig(prune=PruneConfig(amount=0.5, structure="neurons")))
             .with_group("attention", LayerConfig(prune=PruneConfig(amount=2 / 6,
                                                                    structure="heads"))))
    if name == "a_progressive":
        return prune, {"progressive": ProgressiveConfig(importance="taylor")}
    if name == "b_oneshot":
        return prune, {}
    if name == "c_qat4":
        # The preset (front-end and CTC head int8): 4-bit per-block Conv weights export
        # per-channel (no opset-21 blocked DequantizeLinear), so ORT would not run what was
        # simulated and trained for.
        return presets.int4_everywhere(), {"qat": True}
    if name == "d_windowed":
        return CompressionPlan().with_group("attention", LayerConfig(
            windowed_attention={"window_s": 1.0})), {}
    if name == "e_linear":
        return CompressionPlan().with_group(
            "attention", LayerConfig(linear_attention={}),
            blocks=None if blocks is None else tuple(sorted(blocks))), {}
    raise ValueError(f"unknown case {name!r}; cases: {', '.join(CASES)}")


def case_runs(cases: Sequence[str], linear_sets: Sequence[Sequence[int] | None] = LINEAR_SETS
              ) -> list[tuple[str, str, tuple[int, ...] | None]]:
    """(row key, case, swapped block set or None) per run: one per case, and e_linear once per
    entry of `linear_sets` (None: every block, key "e_linear"; (1, 2): "e_linear_blocks_1_2")."""
    runs: list[tuple[str, str, tuple[int, ...] | None]] = []
    for name in cases:
        if name != "e_linear":
            runs.append((name, name, None))
            continue
        for blocks in linear_sets:
            if blocks is None:
                runs.append((name, name, None))
            else:
                sb = tuple(sorted(set(blocks)))
                runs.append((f"{name}_blocks_" + "_".join(map(str, sb)), name, sb))
    return runs


def _load() -> list[float]:
    """os.getloadavg() (1, 5, 15 min), rounded: the machine is shared."""
    return [round(x, 2) for x in os.getloadavg()]


def when_recovered(checkpoint: Path, t0_epoch: float, load: list[float]) -> dict[str, Any]:
    """When and at what load a case's recovery ran. A result found in the recovery cache was
    trained earlier, at another load: say so, and when its checkpoint was written, rather than
    the time and load of the cache lookup (`t0_epoch`: time.time() just before recover_plan)."""
    written = checkpoint.stat().st_mtime
    if written < t0_epoch:
        return {"recovery_cached": True, "recovery_utc_start": None,
                "recovery_utc_written": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(written)),
                "load_recovery": None}
    return {"recovery_cached": False,
            "recovery_utc_start": time.strftime("%H:%M:%S", time.gmtime(t0_epoch)),
            "load_recovery": load}


def _log(msg: str) -> None:
    print(f"[bench recover] {msg}", file=sys.stderr, flush=True)


def host_profile_state() -> dict[str, Any]:
    """Whether the host latency profile the predictions use was calibrated on this machine
    (`workbench calibrate`), and when: an uncalibrated profile's predicted speed-ups are nominal."""
    dev = load_device("host")
    return {"calibrated": bool(dev.calibrated), "calibrated_at": dev.calibrated_at or None,
            "error_band_pct": round(dev.error_band_pct, 1)}


def _predicted(teacher, plan: CompressionPlan, seconds: float, measured: float) -> dict[str, Any]:
    """The host latency model's speed-up for the plan as exported (structure, swaps and the
    quantization the export applies), next to the measured one; null with the reason when
    the model cannot price a setting as the runtime runs it (simulated, not measured)."""
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
    from workbench.export.pipeline import build_export
    from workbench.export.verify import evaluate_ort
    from workbench.models import load_checkpoint  # looked up per call: tests monkeypatch it
    from workbench.onnx_tools.runtime import make_session

    model = load_checkpoint(result.checkpoint)
    rest = CompressionPlan.from_json(Path(result.export_plan).read_text())
    export = build_export(model, rest, force=True)
    sim = {k: round(evaluate(export.sim, s).wer, 4) for k, s in sets.items()}
    session = make_session(export.model)
    ort = {k: round(evaluate_ort(session, s).wer, 4) for k, s in sets.items()}
    return export, sim, ort


def inexact_layers(export: Any) -> dict[str, list[str]]:
    """Layers the export does not run as the plan (and the simulation) says: path -> changes.
    Empty when ORT runs what was simulated."""
    return {d.path: list(d.changes) for d in export.decisions if d.changes}


def bench_recover(minutes: float = 20.0, steps: int | None = None,
                  cases: tuple[str, ...] = CASES, manifests: list[Path] | None = None,
                  time_repeats: int = 5,
                  linear_sets: Sequence[Sequence[int] | None] = LINEAR_SETS) -> dict[str, Any]:
    from workbench.models import load_demo  # looked up per call: tests monkeypatch it
    from workbench.onnx_tools.exporter import export_fp32, to_bytes
    from workbench.onnx_tools.runtime import time_interleaved
    from workbench.recovery import _held_out_sets, recover_plan

    refuse_held_out(manifests, option="--manifest")    # before minutes of setup, naming the option
    if tuple(linear_sets) != LINEAR_SETS and "e_linear" not in cases:
        given = ["all" if b is None else ",".join(map(str, b)) for b in linear_sets]
        raise ArgumentError(f"--blocks {' '.join(given)}: block sets apply to case e_linear "
                            f"only; add --case e_linear or leave --blocks out")
    teacher = load_demo()
    n_blocks = len(teacher.blocks)
    for blocks in linear_sets:
        if blocks is not None and (not blocks or max(blocks) >= n_blocks or min(blocks) < 0):
            raise ArgumentError(f"--blocks {','.join(map(str, blocks))}: the demo has blocks "
                                f"0..{n_blocks - 1}; give indices in that range, e.g. --blocks 1")
    host = host_profile_state()
    if not host["calibrated"]:
        _log("the host latency profile is not calibrated here: predicted speed-ups use nominal "
             "efficiencies (27-39 % off on 2026-12-02, vs <= 4.3 % calibrated); run "
             "`workbench calibrate` (~40 s) first for the latency model's figures")
    sets = _held_out_sets()
    cfg = RecoverConfig(steps=steps or 400, lr=5e-4, warmup=30, max_batch_frames=12_000,
                        max_minutes=minutes)
    base_onnx = to_bytes(export_fp32(teacher))
    out: dict[str, Any] = {"minutes_budget": minutes, "steps_max": cfg.steps, "host_profile": host,
                           "threads": torch.get_num_threads(), "cases": {}}
    start = time.perf_counter()
    for key, name, blocks in case_runs(cases, linear_sets):
        plan, kwargs = case_plan(name, blocks)
        _log(f"{key}: recovering ({minutes:g} min budget)")
        load_recovery, t0_epoch = _load(), time.time()
        result = recover_plan(plan, teacher, config=cfg, manifests=manifests, progress=False,
                              **kwargs)
        r = result.report
        load_recovery += _load()
        recovery_when = when_recovered(Path(result.checkpoint), t0_epoch, load_recovery)
        export, sim_wer, ort_wer = export_parity(result, sets)
        jobs = [((which, s), blob, s) for which, blob in (("base", base_onnx),
                                                          ("case", export.model))
                for s in SECONDS]
        times = time_interleaved(jobs, repeats=time_repeats)
        timing = {}
        for s in SECONDS:
            base_ms, case_ms = times.by_job[("base", s)].ms, times.by_job[("case", s)].ms
            timing[f"{s:g}s"] = {"base_ms": round(base_ms, 2), "case_ms": round(case_ms, 2),
                                 "speedup": round(base_ms / case_ms, 3),
                                 **_predicted(teacher, plan, s, base_ms / case_ms)}
        swapped = (None if name not in ("d_windowed", "e_linear") else
                   list(blocks) if blocks is not None else list(range(len(teacher.blocks))))
        out["cases"][key] = {
            "swapped_blocks": swapped,
            "baseline_wer": r["teacher_greedy_wer"], "wer_before": r["greedy_wer_before"],
            "wer_after": r["greedy_wer_after"],
            "wer_before_quantized": r.get("greedy_wer_before_quantized") or None,
            "wer_after_quantized": r.get("greedy_wer_after_quantized") or None,
            "minutes": r.get("minutes"), "steps": r["steps"],
            "params": r["params"],
            "params_ratio": round(r["params"]["recovered"] / r["params"]["teacher"], 4),
            "wer_sim_export": sim_wer, "wer_ort": ort_wer,
            "ort_minus_sim": {k: round(ort_wer[k] - sim_wer[k], 4) for k in sim_wer},
            "export_inexact": inexact_layers(export),
            "ort": timing, "load": [times.load_before, times.load_after],
            **recovery_when,
            "checkpoint": str(result.checkpoint),
        }
        _log(f"{key}: after {r['greedy_wer_after']}, ORT {ort_wer}, 30 s x"
             f"{timing['30s']['speedup']}")
    out["seconds"] = round(time.perf_counter() - start, 1)
    return out
