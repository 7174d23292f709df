"""`workbench bench interactive --json`: the interactive engine (Session) vs the naive way, same run."""
from __future__ import annotations

import copy
import random
import statistics
import sys
import time

import numpy as np
import torch

from workbench.compress import compress
from workbench.engine.session import Session
from workbench.evaluate import evaluate
from workbench.plan import CompressionPlan, LayerConfig, PruneConfig, QuantConfig
from workbench.size import size



def scripted_changes(model, n: int, seed: int) -> list:
    """A realistic slider session: n single-layer changes on random blocks.

    Each change moves one control of one layer (weight bits 8/6/4, FFN neurons pruned 10-40 %,
    one or two of six heads removed, a rank for an FFN Linear), or resets that layer (1 in 5).
    """
    rng = random.Random(seed)
    n_blocks = len(model.blocks)
    plan = CompressionPlan()
    plans = []
    attn = ["attn.q_proj", "attn.k_proj", "attn.v_proj", "attn.out_proj"]
    for _ in range(n):
        b = rng.randrange(n_blocks)
        kind = rng.choice(["bits", "bits", "neurons", "heads", "rank", "reset"])
        if kind == "bits":
            path = f"blocks.{b}.{rng.choice(attn + ['mlp.fc1', 'mlp.fc2'])}"
            cfg = LayerConfig(quant=QuantConfig(weight_bits=rng.choice([8, 6, 4])))
        elif kind == "neurons":
            path = f"blocks.{b}.mlp"
            cfg = LayerConfig(prune=PruneConfig(amount=rng.choice([0.1, 0.2, 0.3, 0.4]),
                                                structure="neurons"))
        elif kind == "heads":
            path = f"blocks.{b}.attn"
            cfg = LayerConfig(prune=PruneConfig(amount=rng.choice([1 / 6, 2 / 6]),
                                                structure="heads"))
        elif kind == "reset" and plan.layers:
            path, cfg = rng.choice(sorted(plan.layers)), None
        else:
            path = f"blocks.{b}.{rng.choice(['mlp.fc1', 'mlp.fc2'])}"
            cfg = LayerConfig(rank=rng.choice([192, 256, 320]))
        plan = plan.with_layer(path, cfg)
        plans.append(plan)
    return plans


def bench_interactive(changes: int = 30, seed: int = 0) -> dict:
    """Engine vs naive (copy + compress + full eval) over a scripted slider session on the demo."""
    from workbench.evaluate import load_eval_set  # looked up per call: tests monkeypatch it
    from workbench.models import load_demo  # looked up per call: tests monkeypatch it
    from workbench.paths import REAL_TEST  # looked up per call: tests monkeypatch it

    torch.set_num_threads(2)
    model = load_demo()
    eval_set = load_eval_set(REAL_TEST, progress=False)
    t0 = time.perf_counter()
    session = Session(model, eval_set)
    setup_s = time.perf_counter() - t0
    plans = scripted_changes(model, changes, seed)
    size_ms, quick_ms, full_ms = [], [], []
    quick_errors, covered, repeats = [], 0, 0
    seen: set[str] = set()
    for i, plan in enumerate(plans):
        repeats += plan.to_json() in seen
        seen.add(plan.to_json())
        t = time.perf_counter()
        size(model, plan)
        size_ms.append((time.perf_counter() - t) * 1e3)
        t = time.perf_counter()
        quick = session.evaluate(plan, "quick")
        quick_ms.append((time.perf_counter() - t) * 1e3)
        t = time.perf_counter()
        full = session.evaluate(plan, "full")
        full_ms.append((time.perf_counter() - t) * 1e3)
        quick_errors.append(abs(quick.wer - full.wer))
        covered += abs(quick.wer - full.wer) <= 2 * quick.stderr + 1e-9
        print(f"change {i + 1}/{len(plans)}: restart block {full.restart_block}, "
              f"quick {quick_ms[-1]:.0f} ms, full {full_ms[-1]:.0f} ms, WER {full.wer:.3f}",
              file=sys.stderr)
    naive_ms = []
    check = []
    for plan in plans[:: max(1, len(plans) // 5)][:5]:  # the naive way, measured in the same run
        t = time.perf_counter()
        m = compress(copy.deepcopy(model), plan)
        res = evaluate(m, eval_set)
        naive_ms.append((time.perf_counter() - t) * 1e3)
        check.append(abs(res.wer - session.evaluate(plan, "full").wer))
    naive = statistics.median(naive_ms)
    first_readout = float(np.percentile(quick_ms, 50))
    return {
        "changes": len(plans), "eval_utterances": len(eval_set),
        "size_p50_ms": round(float(np.percentile(size_ms, 50)), 2),
        "size_p95_ms": round(float(np.percentile(size_ms, 95)), 2),
        "quick_wer_p50_ms": round(first_readout, 1),
        "quick_wer_p95_ms": round(float(np.percentile(quick_ms, 95)), 1),
        "full_wer_p50_ms": round(float(np.percentile(full_ms, 50)), 1),
        "full_wer_p95_ms": round(float(np.percentile(full_ms, 95)), 1),
        "naive_full_ms": round(naive, 1),
        "speedup_vs_naive": round(naive / first_readout, 2),
        "speedup_full_vs_naive": round(naive / float(np.percentile(full_ms, 50)), 2),
        "engine_vs_naive_max_wer_diff": round(max(check), 5),
        "repeated_plans": repeats,
        "quick_utterances": len(session.quick_indices),
        "quick_abs_error_p50": round(float(np.percentile(quick_errors, 50)), 4),
        "quick_abs_error_max": round(max(quick_errors), 4),
        "quick_within_2_stderr": f"{covered}/{len(plans)}",
        "session_setup_s": round(setup_s, 2),
        "definition": "speedup_vs_naive = naive_full_ms / quick_wer_p50_ms (time to the first WER "
                      "readout); speedup_full_vs_naive uses full_wer_p50_ms; repeated_plans "
                      "(a slider moved back to an earlier plan) are answered from the result "
                      "cache and counted in the percentiles",
        "threads": torch.get_num_threads(),
    }
