"""`workbench eval --conditions [--plan P] [--grid G]` (options in __main__.py) and
`workbench bench conditions`."""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

from workbench.presets import int8_everywhere


def cmd_eval_conditions(args: argparse.Namespace) -> int:
    from workbench.conditions import evaluate_conditions, resolve_grid
    from workbench.models import load_checkpoint, load_demo  # looked up per call: tests monkeypatch it
    from workbench.paths import REAL_TEST  # looked up per call: tests monkeypatch it

    resolve_grid(args.grid)  # a bad grid fails before any model is loaded
    plan = None
    if args.plan:
        from workbench.export.apply import read_plan
        plan = read_plan(Path(args.plan))
    torch.set_num_threads(args.threads)
    model = load_checkpoint(args.checkpoint) if args.checkpoint else load_demo()
    result = evaluate_conditions(model, plan, grid=args.grid,
                                 manifest=Path(args.manifest) if args.manifest else REAL_TEST,
                                 seed=args.seed, plan_name=args.plan)
    if args.json:
        sys.stdout.write(json.dumps(result.to_dict(), indent=2) + "\n")
    else:
        print(result.markdown())
        print(f"\n{len(result.rows)} conditions in {result.seconds:.1f} s "
              f"({result.conditions_from_cache} read from the feature cache)")
    return 0


def bench_conditions(args=None) -> dict:
    """Default grid, baseline + one plan (int8 everywhere), run twice: time and identical numbers.

    The first run starts from an empty feature cache (a fresh temporary folder), so its time
    includes degrading the audio and computing features; the second reads that cache."""
    from workbench.conditions import BaselineCache, evaluate_conditions
    from workbench.models import load_demo  # looked up per call: tests monkeypatch it

    torch.set_num_threads(2)
    seed = getattr(args, "seed", 0) if args is not None else 0
    model = load_demo()
    plan = int8_everywhere()
    baselines = BaselineCache(model)     # kept across runs, as the Conditions tab keeps one
    runs = []
    root = Path(tempfile.mkdtemp(prefix="workbench-bench-conditions-"))
    for label in ("first", "second"):
        t = time.perf_counter()
        result = evaluate_conditions(model, plan, seed=seed, progress=False, cache_root=root,
                                     plan_name="int8_everywhere", baseline_cache=baselines)
        runs.append((label, time.perf_counter() - t, result))
        print(f"bench conditions: {label} run {runs[-1][1]:.1f} s", file=sys.stderr)
    first, second = runs[0][2], runs[1][2]
    shutil.rmtree(root, ignore_errors=True)
    return {
        "conditions": len(first.rows) - 1, "voice_set_rows": 1,
        "plan": "int8_everywhere (preset)",
        "first_run_s": round(runs[0][1], 2), "first_run_feature_s": round(first.feature_seconds, 2),
        "second_run_s": round(runs[1][1], 2),
        "second_run_conditions_from_cache": second.conditions_from_cache,
        "second_run_baselines_from_cache": second.baselines_from_cache,
        "identical_numbers": first.numbers() == second.numbers(),
        "budget_s": 120, "within_budget": runs[0][1] <= 120,
        "threads": torch.get_num_threads(),
        "definition": "first run computes every degraded feature set (no cache) and transcribes "
                      "baseline + plan; the second reads the features from the cache and the "
                      "baseline transcripts from the BaselineCache both runs share (same "
                      "weights, same features), so it transcribes the plan only. The conditions are applied "
                      "to data/real_test; one more row is data/synth_test clean (per-voice "
                      "breakdown).",
        "rows": first.to_dict()["rows"],
        "skipped": list(first.skipped),
    }
