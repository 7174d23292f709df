"""The .pte figures of `workbench bench export`: the int8 plan exported to ExecuTorch (XNNPACK)
and run in ExecuTorch's runtime on both held-out sets.

    pte_wer_by_set        WER of the .pte vs the simulation per set and pooled
                          (acceptance: |diff| <= 0.005 per set), and vs the simulation with
                          XNNPACK's run-time input quantization emulated (batch 1)
    pte_size_error_pct    |file - size() prediction| / file (acceptance: <= 5 %)
    pte_int8_ms           median ms, 5 s input, 1 thread (ExecuTorch pybindings on this host)
"""
from __future__ import annotations

import os
from typing import Any

import torch

from workbench.evaluate import EvalSet, evaluate, score
from workbench.export.emulation import emulate_xnnpack_dynamic, evaluate_batch1
from workbench.export.executorch import PteSession, build_pte, pte_latency_ms, set_threads
from workbench.onnx_tools.runtime import CLOCK
from workbench.export.verify import evaluate_ort
from workbench.plan import CompressionPlan
from workbench.size import size


def pte_figures(model: torch.nn.Module, plan: CompressionPlan, eval_sets: list[EvalSet],
                repeats: int = 15) -> dict[str, Any]:
    export = build_pte(model, plan)
    set_threads(1)
    session = PteSession(export.model)
    by_set: dict[str, Any] = {}
    refs, rt_h, sim_h, emu_all = [], [], [], []
    emulated = emulate_xnnpack_dynamic(export.sim, export.decisions)
    for eval_set in eval_sets:
        rt, sim = evaluate_ort(session, eval_set), evaluate(export.sim, eval_set)
        emu, emu_h = evaluate_batch1(emulated, eval_set)
        by_set[eval_set.name] = {"pte": round(rt.wer, 4), "sim": round(sim.wer, 4),
                                 "abs_diff": round(abs(rt.wer - sim.wer), 4),
                                 "sim_xnnpack_emulated": round(emu, 4),
                                 "abs_diff_emulated": round(abs(rt.wer - emu), 4)}
        emu_all += emu_h
        refs += list(eval_set.texts)
        rt_h += [r.hypothesis for r in rt.per_utterance]
        sim_h += [r.hypothesis for r in sim.per_utterance]
    w_rt, w_sim = score(refs, rt_h)[0], score(refs, sim_h)[0]
    w_emu = score(refs, emu_all)[0]
    by_set["all"] = {"pte": round(w_rt, 4), "sim": round(w_sim, 4),
                     "abs_diff": round(abs(w_rt - w_sim), 4),
                     "sim_xnnpack_emulated": round(w_emu, 4),
                     "abs_diff_emulated": round(abs(w_rt - w_emu), 4)}
    predicted = size(model, plan).total_bytes
    n = len(export.model)
    load = round(os.getloadavg()[0], 2)
    return {"pte_int8_bytes": n, "pte_size_prediction_bytes": predicted,
            "pte_size_error_pct": round(100 * abs(n - predicted) / n, 3),
            "pte_wer_by_set": by_set,
            "pte_wer_abs_diff_max_per_set": max(v["abs_diff"] for k, v in by_set.items()
                                                if k != "all"),
            "pte_wer_abs_diff_emulated_max_per_set": max(
                v["abs_diff_emulated"] for k, v in by_set.items() if k != "all"),
            "pte_int8_ms": pte_latency_ms(export.model, 1, 5.0, repeats),
            "pte_clock": CLOCK,
            "pte_latency_load_average_1min_before": load,
            "pte_export_seconds": export.seconds,
            "pte_notes": list(export.notes) + [
                f"{d.path}: {'; '.join(d.changes)}" for d in export.decisions if d.changes]}
