"""`workbench bench latency`: does the host prediction match fresh ONNX Runtime measurements?

1. Build the fixed calibration variants (workbench.latency.fit_host); the host profile is
   fitted on them in memory (the user's cached calibration is neither read nor written).
2. Draw `n_plans` random plans of the demo model (seeded; a holdout: none is a calibration
   variant): per block, attention heads pruned 0-50 %, FFN neurons pruned 0-75 %, FFN Linears
   low rank with probability 1/4, int8 dynamic quantization of all / some / no Linears.
3. For each plan: compress (shapes + bits), export to ONNX, quantize the int8 Linears in ONNX
   Runtime; time everything (1 thread, median of interleaved repeats), each plan on a random
   audio length in 4-8 s; predict each plan with the host profile fitted on step 1 only.
4. Report MAPE, Spearman rank correlation, the worst error, and the predicted int8-vs-fp32
   speedups of the demo model on the Raspberry Pi 4 and 5, plus the Cortex-M7 flash fit.
"""
from __future__ import annotations

import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from scipy.stats import spearmanr
from torch import nn

from workbench.latency.fit_host import (CALIBRATION_SECONDS, build_variant, calibration_plans,
                                        default_model, fit_record, fitted_host,
                                        measure_variants)
from workbench.latency.cost import predict_latency, price_table
from workbench.latency.table import layer_table
from workbench.onnx_tools.runtime import CLOCK
from workbench import presets
from workbench.plan import CompressionPlan, LayerConfig, PruneConfig, QuantConfig

#: Audio lengths the bench draws from (seconds).
BENCH_SECONDS = (4.0, 5.0, 6.0, 7.0, 8.0)
#: Audio length of the predicted int8 speedups and the M7 fit (seconds).
SPEEDUP_SECONDS = 8.0


def random_plan(model: nn.Module, rng: random.Random) -> tuple[Any, str]:
    """A random mix of head / neuron pruning, low rank and int8 over the model's blocks."""
    plan = CompressionPlan()
    int8 = QuantConfig(weight_bits=8)
    quant_mode = rng.choice(["none", "all", "some", "some"])
    parts = [f"int8:{quant_mode}"]
    n_heads = model.blocks[0].attn.n_heads
    for b in range(len(model.blocks)):
        heads = rng.choice([0, 1, 2, 3]) / n_heads
        neurons = rng.choice([0.0, 0.25, 0.5, 0.75])
        q_attn = quant_mode == "all" or (quant_mode == "some" and rng.random() < 0.5)
        q_ffn = quant_mode == "all" or (quant_mode == "some" and rng.random() < 0.5)
        attn = LayerConfig(prune=PruneConfig(amount=heads, structure="heads") if heads else None)
        if not attn.is_empty():
            plan = plan.with_layer(f"blocks.{b}.attn", attn)
        if neurons:
            plan = plan.with_layer(f"blocks.{b}.mlp",
                                   LayerConfig(prune=PruneConfig(amount=neurons,
                                                                 structure="neurons")))
        for name in ("q_proj", "k_proj", "v_proj", "out_proj"):
            if q_attn:
                plan = plan.with_layer(f"blocks.{b}.attn.{name}", LayerConfig(quant=int8))
        kept_ff = round(model.blocks[b].mlp.fc1.out_features * (1 - neurons))
        for name in ("fc1", "fc2"):
            rank = rng.choice([32, 64, 128]) if rng.random() < 0.25 else None
            if rank is not None and rank >= kept_ff:
                rank = None
            cfg = LayerConfig(rank=rank, quant=int8 if q_ffn else None)
            if not cfg.is_empty():
                plan = plan.with_layer(f"blocks.{b}.mlp.{name}", cfg)
            if rank:
                parts.append(f"b{b}.{name}:r{rank}")
        parts.append(f"b{b}:h-{round(heads * n_heads)},n-{neurons:g}"
                     f"{',qa' if q_attn else ''}{',qf' if q_ffn else ''}")
    return plan, " ".join(parts)


def bench_latency(n_plans: int = 30, seed: int = 0, *, model: nn.Module | None = None,
                  repeats: int = 7, progress: bool = True) -> dict[str, Any]:
    """Predicted (calibrated host) vs measured ONNX Runtime latency of random plans; JSON-able.

    The calibration variants and the bench plans are timed in the same interleaved rounds, so a
    change in the machine's load between the two phases cannot bias the comparison; the fit
    sees only the calibration variants.
    """
    start = time.perf_counter()
    model = model if model is not None else default_model()
    rng = random.Random(seed)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with tempfile.TemporaryDirectory(prefix="workbench-bench-latency-") as tmp:
            work = Path(tmp)
            calib = [build_variant(model, f"calib:{name}", plan, CALIBRATION_SECONDS, work)
                     for name, plan in calibration_plans().items()]
            _log(progress, f"built {len(calib)} calibration variants "
                           f"({time.perf_counter() - start:.0f} s)")
            bench, labels = [], {}
            for i in range(n_plans):
                plan, label = random_plan(model, rng)
                name = f"plan{i}"
                bench.append(build_variant(model, name, plan, [rng.choice(BENCH_SECONDS)], work))
                labels[name] = label
                _log(progress, f"exported plan {i + 1}/{n_plans} "
                               f"({time.perf_counter() - start:.0f} s)")
            points = measure_variants(calib + bench, repeats)
    finally:
        torch.set_num_threads(threads)
    calib_points = [p for p in points if p.variant.startswith("calib:")]
    bench_points = [p for p in points if not p.variant.startswith("calib:")]
    record = fit_record(calib_points)
    host = fitted_host(record)
    rows = []
    for p in bench_points:
        predicted = price_table(p.table, host).total_ms
        rows.append({"plan": labels[p.variant], "seconds": p.seconds,
                     "measured_ms": round(p.measured_ms, 3),
                     "predicted_ms": round(predicted, 3),
                     "pct_error": round((predicted / p.measured_ms - 1) * 100, 2)})
    errors = [abs(r["pct_error"]) for r in rows]
    rho = spearmanr([r["measured_ms"] for r in rows], [r["predicted_ms"] for r in rows])[0]
    fp32_table = layer_table(model, SPEEDUP_SECONDS)
    int8_table = layer_table(model, SPEEDUP_SECONDS, presets.int8_everywhere())
    speed = {dev + (f"_{rt}" if rt else ""):
             predict_latency(fp32_table, dev, SPEEDUP_SECONDS, runtime=rt).total_ms
             / predict_latency(int8_table, dev, SPEEDUP_SECONDS, runtime=rt).total_ms
             for dev, rt in (("rpi4_a72", "xnnpack"), ("rpi4_a72", "tflite"),
                             ("rpi5_a76", None), ("phone_pixel4_a76", None))}
    m7 = predict_latency(int8_table, "cortex_m7_stm32h743", SPEEDUP_SECONDS).memory
    return {
        "n_plans": len(rows),
        "mape_pct": round(statistics.fmean(errors), 2),
        "spearman": round(float(rho), 4),
        "max_abs_pct_error": round(max(errors), 2),
        "median_abs_pct_error": round(statistics.median(errors), 2),
        "pi4_int8_speedup_xnnpack": round(speed["rpi4_a72_xnnpack"], 3),
        "pi4_int8_speedup_tflite": round(speed["rpi4_a72_tflite"], 3),
        "pi5_int8_speedup": round(speed["rpi5_a76"], 3),
        "phone_a76_int8_speedup": round(speed["phone_pixel4_a76"], 3),
        "speedup_definition": f"predicted fp32 / int8 (presets.int8_everywhere) time of the "
                              f"bench model on {SPEEDUP_SECONDS:g} s of audio, device-file "
                              f"threads, runtime as named (default: the device's)",
        "m7_int8_fits": m7.fits,
        "m7_int8_memory": m7.describe(),
        "calibration": {k: record[k] for k in ("mape_pct", "cv_mape_pct", "cv_max_abs_pct_error",
                                               "efficiency", "overhead_us_per_op")},
        "calibration_points": len(calib_points),
        "holdout": "bench plans are random (seed) and disjoint from the fixed calibration "
                   "variants; the fit sees only the calibration variants",
        "measurement": f"onnxruntime CPU EP, 1 thread, {repeats} interleaved rounds after 2 "
                       f"warm-up runs, graphs built by the export's toolbox (workbench.onnx_tools)",
        "clock": CLOCK,
        "plans": rows,
        "seed": seed,
        "elapsed_s": round(time.perf_counter() - start, 1),
    }


def _log(enabled: bool, text: str) -> None:
    if enabled:
        print(text, file=sys.stderr, flush=True)
