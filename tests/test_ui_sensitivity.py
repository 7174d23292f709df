"""workbench.sensitivity: the sweeps, the budgeted search and the Pareto front behind the
Sensitivity and Trade-offs tabs (pure core: no widgets)."""
from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch

from workbench.errors import PlanError, WorkbenchError
from workbench.evaluate import EvalSet
from workbench.latency import predict_latency
from workbench.plan import CompressionPlan
from workbench.sensitivity import (Budgets, SensitivityTable, SweepCell, pareto_front, run_sweep,
                                   suggest_plan, sweep_items, with_setting)
from workbench.engine.session import Session
from workbench.size import size
from workbench.compress.resolution import resolve


@pytest.fixture(scope="module")
def model(tiny_conformer):
    return tiny_conformer


@pytest.fixture(scope="module")
def session(model):
    gen = torch.Generator().manual_seed(1)
    feats = tuple(torch.randn(80, 100 + 30 * i, generator=gen) for i in range(4))
    es = EvalSet("random", Path("/nonexistent"), ("a", "b", "c", "d"),
                 ("hello world", "press one", "thank you", "good bye"), feats)
    return Session(model, es, quick_utterances=2)


def _dominates(a, b) -> bool:
    return a[0] <= b[0] and a[1] <= b[1] and a != b


def test_pareto_front_keeps_exactly_the_non_dominated_points():
    assert pareto_front([(1, 3), (2, 2), (3, 1), (2, 3), (3, 3)]) == [0, 1, 2]
    rng = random.Random(0)
    for _ in range(50):
        pts = [(rng.randint(0, 9), rng.randint(0, 9)) for _ in range(rng.randint(1, 25))]
        front = set(pareto_front(pts))
        for i, p in enumerate(pts):
            dominated = any(_dominates(q, p) for q in pts)
            assert (i in front) == (not dominated), (pts, i)


def test_sweep_cells_change_one_layer_and_measure_against_the_base(model, session):
    paths = ["blocks.0.ffn1", "blocks.0.ffn1.fc1"]
    items = sweep_items(model, CompressionPlan(), sparsities=(0.5,), bits=(8, 2), paths=paths)
    assert [(i.path, i.knob, i.value) for i in items] == [
        ("blocks.0.ffn1", "sparsity", 0.5), ("blocks.0.ffn1.fc1", "bits", 8.0),
        ("blocks.0.ffn1.fc1", "bits", 2.0)]
    assert resolve(items[0].plan, model)["blocks.0.ffn1"].prune.structure == "neurons"
    seen = []
    table = run_sweep(lambda p: session.evaluate(p, "quick"), model, CompressionPlan(),
                      sparsities=(0.5,), bits=(8, 2), paths=paths,
                      progress=lambda done, total: seen.append((done, total)))
    assert table.complete and len(table.cells) == 3
    assert seen[0] == (0, 3) and seen[-1] == (3, 3)
    base = session.evaluate(CompressionPlan(), "quick").wer
    for cell, item in zip(table.cells, items):
        assert cell.wer == pytest.approx(session.evaluate(item.plan, "quick").wer, abs=1e-12)
        assert cell.wer_delta == pytest.approx(cell.wer - base, abs=1e-12)
    rows, values, grid = table.matrix("bits")
    assert rows == ["blocks.0.ffn1.fc1"] and values == [8.0, 2.0]
    assert grid[0] == [table.cells[1].wer_delta, table.cells[2].wer_delta]


def test_a_cancelled_sweep_stops_and_says_so(model, session):
    calls = []

    def evaluate(plan):
        calls.append(plan)
        return session.evaluate(plan, "quick")

    table = run_sweep(evaluate, model, CompressionPlan(), sparsities=(0.25, 0.5), bits=(8,),
                      cancel=lambda: len(calls) >= 3)
    assert not table.complete
    assert len(table.cells) == 2            # base + 2 cells evaluated, then cancelled
    assert len(calls) == 3


def test_with_setting_keeps_the_layers_other_settings(model):
    plan = with_setting(CompressionPlan(), model, "blocks.1.ffn2.fc2", "bits", 4)
    plan = plan.with_layer("blocks.1.ffn2.fc2", plan.layers["blocks.1.ffn2.fc2"].model_copy(
        update={"rank": 8}))
    again = with_setting(plan, model, "blocks.1.ffn2.fc2", "bits", 6)
    entry = again.layers["blocks.1.ffn2.fc2"]
    assert entry.quant.weight_bits == 6 and entry.rank == 8
    with pytest.raises(WorkbenchError, match="sparsity"):
        with_setting(plan, model, "blocks.1.ffn2.fc2", "sparsity", 0.5)


@pytest.mark.parametrize("bits", [0, 9])
def test_a_width_no_plan_can_hold_is_refused_before_any_evaluation(model, bits):
    with pytest.raises(PlanError, match=f"weight_bits.*got {bits}"):
        with_setting(CompressionPlan(), model, "blocks.1.ffn2.fc2", "bits", bits)
    calls = []
    with pytest.raises(PlanError, match="weight_bits"):
        run_sweep(calls.append, model, CompressionPlan(), sparsities=(), bits=(8, bits),
                  paths=["blocks.1.ffn2.fc2"])
    assert calls == []


def _table(model) -> SensitivityTable:
    """Hand-set ΔWERs: 8-bit is nearly free, 2-bit ruins fc1, pruning ffn1 costs a little."""
    cells = [SweepCell("blocks.0.ffn1.fc1", "bits", 8, 0.101, 0.001, 0.0),
             SweepCell("blocks.0.ffn1.fc1", "bits", 2, 0.600, 0.500, 0.0),
             SweepCell("blocks.0.ffn1", "sparsity", 0.5, 0.110, 0.010, 0.0),
             SweepCell("blocks.1.ffn2.fc1", "bits", 8, 0.102, 0.002, 0.0)]
    return SensitivityTable(CompressionPlan(), 0.1, tuple(cells))


def test_suggest_meets_a_size_budget_with_the_cheapest_accuracy(model):
    table = _table(model)
    bytes_of = lambda p: size(model, p).total_bytes  # noqa: E731
    ms_of = lambda p: predict_latency(model, "rpi4", 2.0, p).total_ms  # noqa: E731
    base = bytes_of(CompressionPlan())
    one_int8 = bytes_of(with_setting(CompressionPlan(), model, "blocks.0.ffn1.fc1", "bits", 8))
    budget = Budgets(max_size_bytes=one_int8, max_wer_delta=0.05)
    s = suggest_plan(table, model, bytes_of, ms_of, budget)
    assert s.meets_budgets and s.size_bytes <= one_int8 < base
    assert s.size_bytes == bytes_of(s.plan)           # priced on the combined plan
    assert s.predicted_wer_delta <= 0.05
    bits = {p: c.quant.weight_bits for p, c in resolve(s.plan, model).items() if c.quant}
    assert 2 not in bits.values()                     # the 0.5 ΔWER option is never worth it
    # An impossible budget: the closest plan, flagged, within the ΔWER budget.
    s = suggest_plan(table, model, bytes_of, ms_of, Budgets(max_size_bytes=1000,
                                                            max_wer_delta=0.05))
    assert not s.meets_budgets and s.note and s.predicted_wer_delta <= 0.05
    # Only a ΔWER budget: shrink as far as it allows.
    s = suggest_plan(table, model, bytes_of, ms_of, Budgets(max_wer_delta=0.02))
    assert s.meets_budgets and s.predicted_wer_delta == pytest.approx(0.013)


def test_budgets_refuse_negative_limits():
    with pytest.raises(WorkbenchError, match="max_size_bytes"):
        Budgets(max_size_bytes=-1)
