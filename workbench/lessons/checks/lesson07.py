"""Checks of lesson 07 (the Linear layers of any model)."""
from __future__ import annotations

from collections.abc import Callable

from torch import nn

from workbench.lessons import solutions as ref
from workbench.lessons.checks.core import CheckResult, _run

def check_linear_shapes(fn: Callable[[nn.Module], dict]) -> CheckResult:
    """fn(model) -> {path: (out_features, in_features)} of every nn.Linear."""
    def compare(f: Callable) -> list[str]:
        model = nn.Sequential(nn.Conv1d(4, 8, 3), nn.Sequential(nn.Linear(8, 16), nn.GELU(),
                                                                 nn.Linear(16, 8)),


                              nn.ModuleDict({"head": nn.Linear(8, 3)}))
        got, want = f(model), ref.linear_shapes(model)
        if not isinstance(got, dict):
            return [f"return a dict, got {type(got).__name__}"]
        problems = []
        if set(got) != set(want):
            problems.append(f"paths {sorted(got)}, expected {sorted(want)} (model.named_modules()"
                            f" gives the dotted paths, nested ones included; only nn.Linear)")
        for path in set(got) & set(want):
            if tuple(got[path]) != want[path]:
                problems.append(f"{path}: {tuple(got[path])}, expected {want[path]} "
                                f"(out_features, in_features) = weight.shape")
        return problems
    return _run("linear_shapes", fn, ref.linear_shapes, compare)
