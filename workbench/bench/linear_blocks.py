"""`workbench bench linear-blocks --json`: which blocks can take linear attention (issue 14 e).

Linear attention (elu + 1 feature map, technique `linear_attention`) in every block of the demo
is too much (greedy WER ~1.0 before recovery); this benchmark looks for the blocks that take it
best, without peeking at the held-out sets:

1. Selection, no recovery. The recovery corpus (workbench.recovery.recovery_items, the data
   recover_plan trains on) is split by transcript into a training and a validation part
   (workbench.search.recipe.split_items, the recipe search's split). Each single block is swapped
   and scored on the validation part; then nested sets are grown greedily: add the block whose
   swap hurts the validation score least. Score = (greedy CTC WER vs the labels, then
   KL(teacher || student) of the CTC posteriors per valid frame as the tie-break).
2. Only then: the chosen nested sets (default: the best 1- and 2-block sets) are recovered with
   recover_plan for a fixed number of optimizer steps (steps, not minutes, so the machine's load
   does not change the result) and scored on the held-out sets (real_test, synth_test), with
   the ONNX Runtime export's WER next to the PyTorch one.

The share of attention-score MACs each set removes at 30 s comes from the latency model's layer
table (simulated, not measured). Wall-clock minutes and `os.getloadavg()` are reported next to
every timed figure: the machine is shared.
"""
from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from workbench.compress import compress
from workbench.compress.distill import Distiller, RecoverConfig, frozen_teacher
from workbench.data.held_out import refuse_held_out
from workbench.latency import predict_latency
from workbench.plan import CompressionPlan, LayerConfig

Blocks = tuple[int, ...]
Score = tuple[float, float]       # (val_wer, val_kd): smaller is better, compared in that order


def swap_plan(blocks: Sequence[int]) -> CompressionPlan:
    """Linear attention in the attention of `blocks` only."""
    return CompressionPlan().with_group("attention", LayerConfig(linear_attention={}),
                                        blocks=tuple(sorted(blocks)))


def greedy_sets(n_blocks: int, score: Callable[[Blocks], Score]
                ) -> tuple[dict[Blocks, Score], list[Blocks]]:
    """(every scored set -> score, the greedy nested sets of size 1..n_blocks).

    The singles are all scored; each next set adds the block whose addition scores best (ties:
    the lower block index). `score` is called once per set (n (n + 1) / 2 calls)."""
    scores: dict[Blocks, Score] = {}

    def get(blocks: Blocks) -> Score:
        if blocks not in scores:
            scores[blocks] = score(blocks)
        return scores[blocks]

    chosen: Blocks = ()
    nested: list[Blocks] = []
    for _ in range(n_blocks):
        options = [tuple(sorted(chosen + (b,))) for b in range(n_blocks) if b not in chosen]
        chosen = min(options, key=lambda s: (get(s), s))
        nested.append(chosen)
    return scores, nested


def select_blocks(teacher: torch.nn.Module, items: Sequence, *, val_items: int = 64,
                  seed: int = 0, max_batch_frames: int = 12_000,
                  log: Callable[[str], None] = lambda msg: None) -> dict[str, Any]:
    """Score linear-attention swaps of `teacher` on the validation part of `items` (the
    recovery corpus) without recovery; see the module docstring. Reads no manifest."""
    from workbench.search.recipe import _chunks, _val_eval_set, _val_scores, split_items

    train, val = split_items(items, val_items, seed)
    val_set = _val_eval_set(val)
    distiller = Distiller(frozen_teacher(teacher), val, RecoverConfig(ctc_weight=0.0))
    for chunk in _chunks([it.frames for it in val], max_batch_frames):
        distiller.warm(chunk)
    rows: dict[Blocks, dict[str, Any]] = {}

    def score(blocks: Blocks) -> Score:
        start = time.perf_counter()
        s = _val_scores(compress(teacher, swap_plan(blocks)), distiller, val_set)
        rows[blocks] = {"blocks": list(blocks), **s,
                        "seconds": round(time.perf_counter() - start, 1),
                        "load": _load()}
        log(f"blocks {list(blocks)}: val WER {s['val_wer']}, val KD {s['val_kd']}")
        wer = s["val_wer"] if s["val_wer"] is not None else float("inf")
        return (wer, s["val_kd"])

    baseline = _val_scores(teacher, distiller, val_set)
    scores, nested = greedy_sets(len(teacher.blocks), score)
    return {"train_items": len(train), "val_items": len(val),
            "val_words": sum(len(t.split()) for t in val_set.texts) if val_set else 0,
            "baseline": baseline, "scored": [rows[b] for b in sorted(scores, key=lambda b:
                                                                     (len(b), b))],
            "greedy": [list(b) for b in nested],
            "how": ("linear attention swapped into the listed blocks, no recovery; scored on "
                    "the validation split of the recovery corpus (split by transcript, "
                    "workbench.search.recipe.split_items); greedy CTC WER vs labels, then "
                    "KL(teacher||student) per valid frame; the held-out sets were not read")}


def attention_macs(teacher: torch.nn.Module, blocks: Sequence[int], seconds: float = 30.0
                   ) -> dict[str, Any]:
    """Attention-score MACs (QK^T + AV, or the kernelized equivalent) of the model with `blocks`
    swapped vs none, from the latency model's layer table at `seconds` of audio (simulated)."""
    def totals(plan: CompressionPlan | None) -> tuple[int, int, float]:
        r = predict_latency(teacher, "host", seconds, plan)
        att = sum(x.macs for x in r.layers if x.op == "attention_scores")
        return att, sum(x.macs for x in r.layers), r.total_ms

    base_att, base_all, base_ms = totals(None)
    att, all_, ms = totals(swap_plan(blocks))
    return {"seconds": seconds, "attention_macs_base": base_att, "attention_macs": att,
            "attention_macs_removed": round(1 - att / base_att, 4),
            "all_macs_removed": round(1 - all_ / base_all, 4),
            "host_ms_predicted_speedup": round(base_ms / ms, 3),
            "how": "simulated: the latency model's layer table (roofline, host profile)"}


def _load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def _log(msg: str) -> None:
    print(f"[bench linear-blocks] {msg}", file=sys.stderr, flush=True)


def bench_linear_blocks(steps: int = 90, sizes: Sequence[int] = (1, 2), val_items: int = 64,
                        seed: int = 0, manifests: list[Path] | None = None,
                        ort: bool = True) -> dict[str, Any]:
    from workbench.bench.recover import export_parity
    from workbench.models import load_demo  # looked up per call: tests monkeypatch it
    from workbench.recovery import (DEFAULT_CONFIG, _held_out_sets, recover_plan,
                                    recovery_items)
    from workbench.search.recipe import WARMUP_SHARE

    refuse_held_out(manifests, option="--manifest")
    teacher = load_demo()
    start = time.perf_counter()
    items = recovery_items(manifests, seed=DEFAULT_CONFIG.seed, progress=False)
    _log(f"{len(items)} recovery items; selecting on a validation split of ~{val_items}")
    selection = select_blocks(teacher, items, val_items=val_items, seed=seed,
                              max_batch_frames=DEFAULT_CONFIG.max_batch_frames, log=_log)
    selection["minutes"] = round((time.perf_counter() - start) / 60, 2)
    del items
    # Held-out sets: loaded only now, after the selection is fixed.
    sets = _held_out_sets()
    cfg = replace(DEFAULT_CONFIG, steps=steps, max_minutes=None,
                  warmup=max(1, round(steps * WARMUP_SHARE)))
    out: dict[str, Any] = {"selection": selection, "steps": steps,
                           "threads": torch.get_num_threads(), "recovered": []}
    for k in sizes:
        blocks = tuple(selection["greedy"][k - 1])
        _log(f"recovering blocks {list(blocks)} for {steps} steps")
        load_before, t0 = _load(), time.perf_counter()
        result = recover_plan(swap_plan(blocks), teacher, config=cfg, manifests=manifests,
                              progress=False)
        r = result.report
        row: dict[str, Any] = {
            "blocks": list(blocks), "baseline_wer": r["teacher_greedy_wer"],
            "wer_before": r["greedy_wer_before"], "wer_after": r["greedy_wer_after"],
            "steps": r["steps"], "minutes": r.get("minutes"),
            "wall_minutes_this_run": round((time.perf_counter() - t0) / 60, 2),
            "load_before": load_before, "load_after": _load(),
            "attention": attention_macs(teacher, blocks), "checkpoint": str(result.checkpoint)}
        if ort:
            _, sim, ort_wer = export_parity(result, sets)
            row.update(wer_sim_export=sim, wer_ort=ort_wer,
                       ort_minus_sim={n: round(ort_wer[n] - sim[n], 4) for n in sim})
        out["recovered"].append(row)
        _log(f"blocks {list(blocks)}: before {row['wer_before']}, after {row['wer_after']}")
    out["seconds"] = round(time.perf_counter() - start, 1)
    out["how"] = ("selection on the recovery corpus' validation split only; then recover_plan "
                  "(layer-wise distillation + KL + 0.2 CTC) for a fixed number of steps on the "
                  "whole recovery corpus; held-out greedy WER (real_test, synth_test) before / "
                  "after; load = os.getloadavg() (1, 5, 15 min) on a shared 2-core machine")
    return out
