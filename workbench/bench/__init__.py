"""Benchmarks behind `workbench bench WHAT --json`: each returns one JSON-able dict (printed on stdout).

One module per benchmark here, at the top layer (a benchmark may use any part of the package),
except the two listed last, which live with their feature:

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
    lessons       every lab's run time (workbench.lesson_timing)
    conditions    the conditions grid twice: time and identical numbers (workbench.conditions.cli)

`run(what, args)` looks the name up in BENCHES and imports the module only then: `workbench
--help` and the other commands must not pay for torch models, onnxruntime, ray or executorch they
do not use (import speed).
"""
from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path
from typing import Any


def _paths(args: Any) -> list[Path] | None:
    return [Path(m) for m in args.manifest] or None


#: `workbench bench WHAT` -> (module, function, the function's keyword arguments from the CLI's
#: parsed arguments). A benchmark that reads the namespace itself takes {"args": args}.
BENCHES: dict[str, tuple[str, str, Callable[[Any], dict[str, Any]]]] = {
    "interactive": ("workbench.bench.interactive", "bench_interactive",
                    lambda a: {"changes": a.changes, "seed": a.seed}),
    "latency": ("workbench.bench.latency", "bench_latency",
                lambda a: {"n_plans": a.n_plans, "seed": a.seed}),
    "latency --published": ("workbench.latency.published", "bench_published", lambda a: {}),
    "search": ("workbench.bench.search", "bench_search",
               lambda a: {"trials": a.trials, "seed": a.seed, "ray": not a.no_ray}),
    "export": ("workbench.bench.export", "bench_export", lambda a: {"args": a}),
    "streaming": ("workbench.bench.streaming", "bench_streaming", lambda a: {"args": a}),
    "whisper": ("workbench.bench.whisper", "bench_whisper", lambda a: {"args": a}),
    "recover": ("workbench.bench.recover", "bench_recover",
                lambda a: {"minutes": a.minutes, "steps": a.steps, "manifests": _paths(a),
                           **({"cases": tuple(a.case)} if a.case else {}),
                           **({"linear_sets": tuple(a.blocks)} if a.blocks else {})}),
    "drift": ("workbench.bench.drift", "bench_drift", lambda a: {"args": a}),
    "byo": ("workbench.bench.byo", "bench_byo", lambda a: {"args": a}),
    "linear-blocks": ("workbench.bench.linear_blocks", "bench_linear_blocks",
                      lambda a: {"steps": a.steps or 90, "seed": a.seed,
                                 "manifests": _paths(a)}),
    "lessons": ("workbench.lesson_timing", "bench_lessons",
                lambda a: {"only": a.only, "budget_s": a.budget}),
    "conditions": ("workbench.conditions.cli", "bench_conditions", lambda a: {"args": a}),
}


def run(what: str, args: Any) -> dict[str, Any]:
    """Run benchmark `what` (a BENCHES key; `latency` with --published: the published check)."""
    if what == "latency" and getattr(args, "published", False):
        what = "latency --published"
    if what not in BENCHES:
        raise ValueError(what)
    module, name, kwargs = BENCHES[what]
    return getattr(importlib.import_module(module), name)(**kwargs(args))
