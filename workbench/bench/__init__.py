"""Benchmarks behind `workbench bench WHAT --json`: each returns one JSON-able dict (printed on stdout).

One module per benchmark, all here at the top layer (a benchmark may use any part of the package):

    interactive   the Session (quick / full WER readouts) vs copy + compress + evaluate
    latency       host latency prediction vs fresh ONNX Runtime measurements (`--published`:
                  the edge model against published measurements, workbench.latency.published)
    export        fp32 / int8 / pruned int8 / int4 ONNX exports (+ the .pte figures, export_pte)
    search        a budgeted plan search, serial vs Ray
    streaming     WER vs chunk size, the streaming ONNX step's parity and latency
    whisper       the full Whisper tiny.en model: WER, session latency, simulated RTF
    recover       progressive vs one-shot pruning, QAT, windowed / linear attention swaps:
                  WER before / after recovery at equal minutes, ORT WER and ms vs the baseline
    drift         the deployment drift monitor on clean vs noisy / telephone audio
    byo           graph-found structured pruning vs Torch-Pruning on foreign encoders
    linear-blocks which blocks take linear attention: chosen on a validation split of the
                  recovery corpus, then recovered for fixed steps and scored on the held-out sets

Benchmarks that live with their feature: lessons (workbench.lesson_timing), conditions
(workbench.conditions.cli).
"""
from __future__ import annotations

from typing import Any

def run(what: str, args) -> dict[str, Any]:
    # Each benchmark is imported when asked for: `workbench --help` and the other commands must not
    # pay for torch models, onnxruntime, ray or executorch they do not use (import speed).
    if what == "interactive":
        from workbench.bench.interactive import bench_interactive
        return bench_interactive(changes=args.changes, seed=args.seed)
    if what == "latency" and getattr(args, "published", False):
        from workbench.latency.published import bench_published
        return bench_published()
    if what == "latency":
        from workbench.bench.latency import bench_latency
        return bench_latency(n_plans=args.n_plans, seed=args.seed)
    if what == "search":
        from workbench.bench.search import bench_search
        return bench_search(trials=args.trials, seed=args.seed, ray=not args.no_ray)
    if what == "export":
        from workbench.bench.export import bench_export
        return bench_export(args)
    if what == "lessons":
        from workbench.lesson_timing import bench_lessons
        return bench_lessons(only=args.only, budget_s=args.budget)
    if what == "conditions":
        from workbench.conditions.cli import bench_conditions
        return bench_conditions(args)
    if what == "drift":
        from workbench.bench.drift import bench_drift
        return bench_drift(args)
    if what == "whisper":
        from workbench.bench.whisper import bench_whisper
        return bench_whisper(args)
    if what == "byo":
        from workbench.bench.byo import bench_byo
        return bench_byo(args)
    if what == "recover":
        from pathlib import Path

        from workbench.bench.recover import CASES, bench_recover
        return bench_recover(minutes=args.minutes, steps=args.steps,
                             cases=tuple(args.case) or CASES,
                             manifests=[Path(m) for m in args.manifest] or None)
    if what == "linear-blocks":
        from pathlib import Path

        from workbench.bench.linear_blocks import bench_linear_blocks
        return bench_linear_blocks(steps=args.steps or 90, seed=args.seed,
                                   manifests=[Path(m) for m in args.manifest] or None)
    if what == "streaming":
        from workbench.bench.streaming import bench_streaming
        return bench_streaming(args)
    raise ValueError(what)
