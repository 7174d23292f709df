"""Pareto fronts and hypervolume over any number of minimised objectives (pure Python)."""
from __future__ import annotations

from collections.abc import Sequence


def dominates(a: Sequence[float], b: Sequence[float]) -> bool:
    """a is <= b everywhere and < somewhere (all objectives minimised)."""
    return all(x <= y for x, y in zip(a, b)) and any(x < y for x, y in zip(a, b))


def pareto_indices(points: Sequence[Sequence[float]]) -> list[int]:
    """Indices of the non-dominated points, in input order; exact duplicates keep the first."""
    out: list[int] = []
    seen: set[tuple[float, ...]] = set()
    for i, p in enumerate(points):
        t = tuple(p)
        if t in seen:
            continue
        if not any(dominates(q, p) for q in points):
            out.append(i)
            seen.add(t)
    return out


def _hv2(points: list[tuple[float, float]], ref: tuple[float, float]) -> float:
    pts = sorted(p for p in points if p[0] < ref[0] and p[1] < ref[1])
    area, best_y = 0.0, ref[1]
    for x, y in pts:
        if y < best_y:
            area += (ref[0] - x) * (best_y - y)
            best_y = y
    return area


def hypervolume(points: Sequence[Sequence[float]], ref: Sequence[float]) -> float:
    """Volume dominated by `points` and bounded by `ref` (2 or 3 objectives, minimised).

    3-D by slicing along the last objective: between consecutive z values, the slab's area is the
    2-D hypervolume of the points at or below it. O(n^2 log n), fine for fronts of a few hundred.
    """
    if len(ref) == 2:
        return _hv2([(p[0], p[1]) for p in points], (ref[0], ref[1]))
    if len(ref) != 3:
        raise ValueError("hypervolume: 2 or 3 objectives")
    pts = sorted((tuple(p) for p in points if all(x < r for x, r in zip(p, ref))),
                 key=lambda p: p[2])
    volume = 0.0
    for i, p in enumerate(pts):
        z_next = pts[i + 1][2] if i + 1 < len(pts) else ref[2]
        if z_next > p[2]:
            volume += _hv2([(q[0], q[1]) for q in pts[: i + 1]], (ref[0], ref[1])) * (z_next - p[2])
    return volume
