"""How much each layer can take: per-layer sweeps, a budgeted plan search, and the Pareto front.

    table = run_sweep(evaluate, model, base_plan)            # one layer and one setting at a time
    table.matrix("bits")                                     # (paths, values, ΔWER grid) for a heat map
    s = suggest_plan(table, model, base_plan, size_bytes, latency_ms,
                     Budgets(max_size_bytes=2_000_000, max_wer_delta=0.02))

Sweep: starting from `base_plan`, each cell changes one thing — the weight bits of one Linear /
Conv layer, or the structured sparsity of one attention (heads), FFN (neurons) or conv module
(channels) — and measures WER with the caller's `evaluate` (the UI passes the Session's quick
estimate, which restarts from the changed block). A cell's ΔWER is relative to `base_plan`.

Search (`suggest_plan`): greedy under the additive model that ΔWER, bytes saved and milliseconds
saved of single-layer changes add up. That is what makes per-layer sensitivity useful (HAWQ,
Dong et al. 2019, and AMC, He et al. 2018, make the same assumption); it is an approximation, so
the suggestion reports the sizes and latencies of the *combined* plan from the caller's functions
and the UI measures its WER afterwards. Moves are taken in order of cost saved per unit of
predicted ΔWER, until every cost budget is met; a move that would break the ΔWER budget is skipped.
Without a size or latency budget, the search shrinks the model as far as the ΔWER budget allows.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

from torch import nn

from workbench.engine.jobs import Cancelled
from workbench.errors import WorkbenchError
from workbench.compress.targets import find_targets
from workbench.plan import STRUCTURE_FOR_KIND, CompressionPlan, LayerConfig, PruneConfig, QuantConfig

Knob = Literal["sparsity", "bits"]
#: Default sweep values: structured sparsity fractions, and weight bits (most aggressive last).
SPARSITIES: tuple[float, ...] = (0.25, 0.5, 0.75)
BITS: tuple[int, ...] = (8, 6, 4, 3, 2)


class WerLike(Protocol):
    """What `evaluate` must return (workbench.engine.session.WerEstimate fits)."""

    wer: float
    stderr: float


@dataclass(frozen=True)
class SweepCell:
    path: str
    knob: Knob
    value: float
    wer: float
    wer_delta: float          # vs the base plan's WER, same evaluation
    stderr: float


@dataclass(frozen=True)
class SensitivityTable:
    """Sweep results. `complete` is False when the sweep was cancelled part-way."""

    base_plan: CompressionPlan
    base_wer: float
    cells: tuple[SweepCell, ...]
    complete: bool = True

    def matrix(self, knob: Knob) -> tuple[list[str], list[float], list[list[float | None]]]:
        """(layer paths, sweep values, ΔWER[path][value]) of one knob; None where not measured."""
        paths = list(dict.fromkeys(c.path for c in self.cells if c.knob == knob))
        values = sorted({c.value for c in self.cells if c.knob == knob},
                        reverse=(knob == "bits"))
        grid: list[list[float | None]] = [[None] * len(values) for _ in paths]
        for c in self.cells:
            if c.knob == knob:
                grid[paths.index(c.path)][values.index(c.value)] = c.wer_delta
        return paths, values, grid


@dataclass(frozen=True)
class SweepItem:
    """One cell to measure: the plan that changes `path`'s `knob` to `value`."""

    path: str
    knob: Knob
    value: float
    plan: CompressionPlan


def sweep_items(model: nn.Module, base_plan: CompressionPlan,
                sparsities: Sequence[float] = SPARSITIES, bits: Sequence[int] = BITS,
                paths: Sequence[str] | None = None) -> list[SweepItem]:
    """The cells of a sweep, in model order: sparsity of structured modules, bits of layers."""
    items = []
    for path, target in find_targets(model).items():
        if paths is not None and path not in paths:
            continue
        if target.kind in STRUCTURE_FOR_KIND:
            items += [SweepItem(path, "sparsity", float(a), with_setting(
                base_plan, model, path, "sparsity", a)) for a in sparsities]
        elif target.kind in ("linear", "conv"):
            items += [SweepItem(path, "bits", float(b), with_setting(
                base_plan, model, path, "bits", b)) for b in bits]
    return items


def with_setting(plan: CompressionPlan, model: nn.Module, path: str, knob: Knob,
                 value: float) -> CompressionPlan:
    """`plan` with one knob of one layer set, keeping that layer's other explicit settings."""
    target = find_targets(model).get(path)
    if target is None:
        raise WorkbenchError(f"path: '{path}' is not a layer a plan can name.")
    entry = plan.layers.get(path)
    base = entry if isinstance(entry, LayerConfig) else LayerConfig()
    if knob == "sparsity":
        if target.kind not in STRUCTURE_FOR_KIND:
            raise WorkbenchError(f"knob: sparsity sweeps take attention / FFN / conv modules; "
                                 f"'{path}' is a {target.kind}.")
        cfg = base.model_copy(update={"prune": PruneConfig(
            amount=float(value), structure=STRUCTURE_FOR_KIND[target.kind])})
    else:
        old = base.quant or QuantConfig()
        # a width no plan can hold (0, 9) is a PlanError here, before any model run
        cfg = base.model_copy(update={"quant": old.model_copy(
            update={"weight_bits": int(value)})})
    return plan.with_layer(path, cfg)


def run_sweep(evaluate: Callable[[CompressionPlan], WerLike], model: nn.Module,
              base_plan: CompressionPlan, *, sparsities: Sequence[float] = SPARSITIES,
              bits: Sequence[int] = BITS, paths: Sequence[str] | None = None,
              cancel: Callable[[], bool] = lambda: False,
              progress: Callable[[int, int], None] = lambda done, total: None,
              ) -> SensitivityTable:
    """Measure every sweep cell with `evaluate`; stop early (complete=False) when `cancel()`.

    An exception from `evaluate` propagates, except that a cancellation raised inside it (the
    Session raises `Cancelled`) ends the sweep like `cancel()` does.
    """
    items = sweep_items(model, base_plan, sparsities, bits, paths)
    base = evaluate(base_plan)
    cells: list[SweepCell] = []
    progress(0, len(items))
    for i, item in enumerate(items):
        if cancel():
            return SensitivityTable(base_plan, base.wer, tuple(cells), complete=False)
        try:
            result = evaluate(item.plan)
        except Exception as err:
            if isinstance(err, Cancelled) or cancel():
                return SensitivityTable(base_plan, base.wer, tuple(cells), complete=False)
            raise
        cells.append(SweepCell(item.path, item.knob, item.value, result.wer,
                               result.wer - base.wer, result.stderr))
        progress(i + 1, len(items))
    return SensitivityTable(base_plan, base.wer, tuple(cells), complete=True)


# ---- search ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Budgets:
    """Limits for `suggest_plan`; None = no limit on that quantity."""

    max_size_bytes: int | None = None
    max_latency_ms: float | None = None
    max_wer_delta: float | None = None

    def __post_init__(self) -> None:
        for name in ("max_size_bytes", "max_latency_ms", "max_wer_delta"):
            v = getattr(self, name)
            if v is not None and v < 0:
                raise WorkbenchError(f"Budgets.{name}: must be >= 0 (or None for no limit), "
                                     f"got {v}.")


@dataclass(frozen=True)
class Suggestion:
    plan: CompressionPlan
    predicted_wer_delta: float    # additive over the chosen cells, vs the sweep's base plan
    size_bytes: int               # of the combined plan, from the caller's size function
    latency_ms: float             # of the combined plan, from the caller's latency function
    meets_budgets: bool
    steps: tuple[str, ...] = field(default=())
    note: str = ""


def suggest_plan(table: SensitivityTable, model: nn.Module,
                 size_bytes: Callable[[CompressionPlan], int],
                 latency_ms: Callable[[CompressionPlan], float], budgets: Budgets
                 ) -> Suggestion:
    """A plan meeting `budgets` by greedy search over the sweep's cells (module docstring)."""
    base = table.base_plan
    base_size, base_lat = size_bytes(base), latency_ms(base)
    # Savings of each single change, measured by the caller's functions (exact per layer).
    options: dict[tuple[str, Knob], list[tuple[SweepCell, int, float]]] = {}
    for c in table.cells:
        p = with_setting(base, model, c.path, c.knob, c.value)
        options.setdefault((c.path, c.knob), []).append(
            (c, base_size - size_bytes(p), base_lat - latency_ms(p)))
    chosen: dict[tuple[str, Knob], tuple[SweepCell, int, float]] = {}
    max_dwer = budgets.max_wer_delta if budgets.max_wer_delta is not None else float("inf")
    steps: list[str] = []

    def totals() -> tuple[float, float, float]:
        return (sum(max(c.wer_delta, 0.0) for c, _, _ in chosen.values()),
                base_size - sum(s for _, s, _ in chosen.values()),
                base_lat - sum(t for _, _, t in chosen.values()))

    while True:
        dwer, size_now, lat_now = totals()
        need_size = (size_now - budgets.max_size_bytes) if budgets.max_size_bytes is not None else 0
        need_lat = (lat_now - budgets.max_latency_ms) if budgets.max_latency_ms is not None else 0
        shrink_only = budgets.max_size_bytes is None and budgets.max_latency_ms is None
        if not shrink_only and need_size <= 0 and need_lat <= 0:
            break
        best, best_score = None, 0.0
        for key, opts in options.items():
            cur = chosen.get(key)
            for opt in opts:
                c, s, t = opt
                ds = s - (cur[1] if cur else 0)
                dt = t - (cur[2] if cur else 0.0)
                cost = max(c.wer_delta, 0.0) - (max(cur[0].wer_delta, 0.0) if cur else 0.0)
                if ds <= 0 and dt <= 0 or dwer + cost > max_dwer + 1e-12:
                    continue
                if shrink_only:
                    gain = ds / max(base_size, 1)
                else:
                    gain = ((min(ds, need_size) / need_size if need_size > 0 else 0.0)
                            + (min(dt, need_lat) / need_lat if need_lat > 0 else 0.0))
                score = gain / (max(cost, 0.0) + 1e-4)
                if gain > 0 and score > best_score:
                    best, best_score = (key, opt), score
        if best is None:
            break
        key, opt = best
        chosen[key] = opt
        steps.append(f"{key[0]}: {key[1]} {opt[0].value:g} (ΔWER {opt[0].wer_delta:+.3f})")

    plan = base
    for (path, knob), (c, _, _) in chosen.items():
        plan = with_setting(plan, model, path, knob, c.value)
    size_now, lat_now = size_bytes(plan), latency_ms(plan)
    dwer = sum(max(c.wer_delta, 0.0) for c, _, _ in chosen.values())
    meets = ((budgets.max_size_bytes is None or size_now <= budgets.max_size_bytes)
             and (budgets.max_latency_ms is None or lat_now <= budgets.max_latency_ms)
             and dwer <= max_dwer + 1e-12)
    note = "" if meets else ("no plan built from the sweep's settings meets every budget; this is "
                             "the closest found. Relax a budget or sweep more aggressive values.")
    return Suggestion(plan, dwer, int(size_now), float(lat_now), meets, tuple(steps), note)


def pareto_front(costs: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats on both costs (both minimised), by first cost.

    A point is dominated when another is <= on both and < on one; exact duplicates all stay.
    """
    order = sorted(range(len(costs)), key=lambda i: (costs[i][0], costs[i][1]))
    front: list[int] = []
    best_second = float("inf")
    for i in order:
        x, y = costs[i]
        if y < best_second or (front and costs[front[-1]] == (x, y)):
            front.append(i)
            best_second = min(best_second, y)
    return front
