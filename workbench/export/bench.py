"""`workbench bench export --json`: the export's acceptance numbers, all measured in one run.

On the demo model (or, before it is trained, the pretrained Whisper encoder with its untrained
head, which the output says): fp32, int8, pruned + int8 (50 % of FFN neurons and 25 % of heads
removed) and int4 exports of the real-speech test set's model; ORT at 1 thread.

    speedup             fp32_ms / int8_ms            (median, 5 s input, measured in turns)
    pruned_int8_speedup fp32_ms / pruned_int8_ms
    size_ratio_int8     fp32_bytes / int8_bytes      (both files from the same exporter:
    size_ratio_int4     fp32_bytes / int4_bytes       positions computed from their formula)
    size_pred_error_pct |file - size() prediction| / file, worst of the three plans
    wer_sim / wer_ort   simulated (PyTorch, compress(model, plan)) vs ONNX Runtime WER

`fp32_stored_table_bytes` is the plain fp32 export that stores the 1500 x 384 position table,
for reference (ratios against it are 7-8 % higher; we do not use them).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

import torch

from workbench.compress.targets import find_targets
from workbench.errors import CheckpointError
from workbench.evaluate import evaluate, load_eval_set
from workbench.export.onnx_export import export_fp32, to_bytes
from workbench.export.pipeline import Export, build_export
from workbench.export.positions import bytes_priced_elsewhere
from workbench.export.report import tensor_bytes
from workbench.export.verify import evaluate_ort, latency_ms, make_session
from workbench.paths import REAL_TEST
from workbench.plan import CompressionPlan, LayerConfig, PruneConfig, QuantConfig
from workbench.size import size

INT8 = QuantConfig(weight_bits=8, granularity="per_channel", symmetric=True)
INT4_LINEAR = QuantConfig(weight_bits=4, granularity="per_block", symmetric=True)
INT4_CONV = QuantConfig(weight_bits=4, granularity="per_channel", symmetric=True)


def int8_plan() -> CompressionPlan:
    """int8 per-channel symmetric weights in every Linear and Conv."""
    return CompressionPlan(default=LayerConfig(quant=INT8))


def pruned_int8_plan() -> CompressionPlan:
    """int8 everywhere, 50 % of every FFN's neurons and 25 % of every attention's heads removed."""
    return (int8_plan()
            .with_group("ffn", LayerConfig(prune=PruneConfig(amount=0.5, structure="neurons")))
            .with_group("attention", LayerConfig(prune=PruneConfig(amount=0.25,
                                                                   structure="heads"))))


def int4_plan(model: torch.nn.Module) -> CompressionPlan:
    """4-bit weights everywhere: Linear block-wise (MatMulNBits, 32 per scale), Conv per channel
    (int4 + DequantizeLinear)."""
    convs = {p: LayerConfig(quant=INT4_CONV) for p, t in find_targets(model).items()
             if t.kind == "conv"}
    return CompressionPlan(default=LayerConfig(quant=INT4_LINEAR), layers=convs)


def _model() -> tuple[torch.nn.Module, str]:
    from workbench.models import load_demo, whisper_ctc_pretrained
    try:
        return load_demo(), "demo"
    except CheckpointError:
        return whisper_ctc_pretrained(), "whisper_ctc_pretrained (untrained CTC head: WER ~1)"


def _log(msg: str) -> None:
    print(f"[bench export] {msg}", file=sys.stderr, flush=True)


def _size_error(model: torch.nn.Module, plan: CompressionPlan, export: Export) -> dict[str, Any]:
    predicted = size(model, plan).total_bytes - bytes_priced_elsewhere(export.computed_tables,
                                                                       set(model.state_dict()))
    return {"file_bytes": len(export.model), "predicted_bytes": predicted,
            "error_pct": round(100 * abs(len(export.model) - predicted) / len(export.model), 3),
            "tensor_error_pct": round(100 * abs(tensor_bytes(export.proto) - predicted)
                                      / tensor_bytes(export.proto), 3)}


def bench_export(args: argparse.Namespace | None = None) -> dict[str, Any]:
    """Run the export benchmark (see module docstring); returns one JSON-able dict."""
    start = time.perf_counter()
    torch.set_num_threads(2)          # the PyTorch simulation; ORT threads are set per session
    repeats = int(getattr(args, "repeats", 0) or 30)
    model, model_name = _model()
    _log(f"model: {model_name}")
    eval_set = load_eval_set(REAL_TEST, progress=False)
    plans = {"fp32": CompressionPlan(), "int8": int8_plan(), "pruned_int8": pruned_int8_plan(),
             "int4": int4_plan(model)}
    exports = {}
    for name, plan in plans.items():
        _log(f"export {name}")
        exports[name] = build_export(model, plan)
    stored_table = len(to_bytes(export_fp32(model)))
    _log("latency (1 thread, 5 s input, in turns)")
    load_before = os.getloadavg()[0]
    ms = latency_ms({name: e.model for name, e in exports.items()}, threads=1, seconds=5.0,
                    repeats=repeats)
    wer = {}
    for name in ("fp32", "int8", "pruned_int8"):
        _log(f"WER {name} (ORT and simulated) on {eval_set.name}")
        ort_eval = evaluate_ort(make_session(exports[name].model, 1), eval_set)
        sim_eval = evaluate(exports[name].sim, eval_set)
        wer[name] = (ort_eval, sim_eval)
    sizes = {name: _size_error(model, plans[name], exports[name])
             for name in ("int8", "pruned_int8", "int4")}
    heads = [(p, m.n_heads) for p, m in exports["pruned_int8"].structural.named_modules()
             if hasattr(m, "n_heads")]
    fp32_bytes = len(exports["fp32"].model)
    result = {
        "model": model_name,
        "eval_set": str(eval_set.manifest), "utterances": len(eval_set),
        "fp32_ms": ms["fp32"], "int8_ms": ms["int8"],
        "speedup": round(ms["fp32"] / ms["int8"], 3),
        "pruned_int8_ms": ms["pruned_int8"],
        "pruned_int8_speedup": round(ms["fp32"] / ms["pruned_int8"], 3),
        "int4_ms": ms["int4"],
        "fp32_bytes": fp32_bytes, "int8_bytes": len(exports["int8"].model),
        "int4_bytes": len(exports["int4"].model),
        "pruned_int8_bytes": len(exports["pruned_int8"].model),
        "size_ratio_int8": round(fp32_bytes / len(exports["int8"].model), 3),
        "size_ratio_int4": round(fp32_bytes / len(exports["int4"].model), 3),
        "fp32_stored_table_bytes": stored_table,
        "size_pred_error_pct": max(s["error_pct"] for s in sizes.values()),
        "size_pred_error_by_plan": sizes,
        "wer_sim": round(wer["int8"][1].wer, 4), "wer_ort": round(wer["int8"][0].wer, 4),
        "wer_sim_pruned": round(wer["pruned_int8"][1].wer, 4),
        "wer_ort_pruned": round(wer["pruned_int8"][0].wer, 4),
        "wer_fp32_torch": round(wer["fp32"][1].wer, 4),
        "wer_fp32_ort": round(wer["fp32"][0].wer, 4),
        "cer_sim": round(wer["int8"][1].cer, 4), "cer_ort": round(wer["int8"][0].cer, 4),
        "pruned_heads_kept": dict(heads),
        "latency": {"threads": 1, "input_seconds": 5.0, "repeats": repeats,
                    "statistic": "median, sessions measured in turns",
                    "load_average_1min_before": round(load_before, 2)},
        "plans": {name: json.loads(plan.to_json()) for name, plan in plans.items()},
        "seconds": round(time.perf_counter() - start, 1),
    }
    result["wer_abs_diff"] = round(abs(result["wer_ort"] - result["wer_sim"]), 4)
    result["wer_abs_diff_pruned"] = round(abs(result["wer_ort_pruned"] - result["wer_sim_pruned"]),
                                          4)
    return result
