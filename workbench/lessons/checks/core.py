"""The machinery every lesson check shares: the result type, the runner that falls back to the
reference solution (and proves the reference passes), seeded inputs and comparison helpers."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from workbench.errors import WorkbenchError


#: Problems listed per failed check (the first ones are the useful ones).
MAX_PROBLEMS = 4


class LessonCheckError(WorkbenchError):
    """A check failed on its own reference solution (a bug in the lesson, not the learner's)."""


@dataclass
class CheckResult:
    """Outcome of one check. `function`: the learner's when it passed, else the reference."""

    name: str
    status: str                      # "passed" | "failed" | "not implemented"
    problems: list[str] = field(default_factory=list)
    function: Callable | None = None

    @property
    def passed(self) -> bool:
        return self.status == "passed"

    def __bool__(self) -> bool:
        return self.passed

    def text(self) -> str:
        if self.status == "passed":
            return f"✓ {self.name}: passed"
        if self.status == "not implemented":
            return (f"… {self.name}: not done yet (the cell still raises NotImplementedError). "
                    f"The lesson continues with the reference, "
                    f"workbench.lessons.solutions.{self.name}.")
        lines = [f"✗ {self.name}: {len(self.problems)} problem(s)"]
        lines += [f"  - {p}" for p in self.problems[:MAX_PROBLEMS]]
        lines.append(f"  (the lesson continues with the reference, "
                     f"workbench.lessons.solutions.{self.name})")
        return "\n".join(lines)

    def __repr__(self) -> str:
        return self.text()


Compare = Callable[[Callable], list[str]]


def _run(name: str, fn: Any, reference: Callable, compare: Compare) -> CheckResult:
    """Run `compare` on the learner's `fn`; on NotImplementedError, verify the reference."""
    if not callable(fn):
        return CheckResult(name, "failed", [f"expected a function, got {type(fn).__name__}"],
                           reference)
    try:
        problems = compare(fn)
    except NotImplementedError:
        own = compare(reference)
        if own:
            raise LessonCheckError(f"check_{name} fails its own reference: {own}") from None
        return CheckResult(name, "not implemented", [], reference)
    except Exception as err:  # the learner's code raised: say what and where
        return CheckResult(name, "failed", [f"raised {type(err).__name__}: {err}"], reference)
    if problems:
        return CheckResult(name, "failed", problems, reference)
    return CheckResult(name, "passed", [], fn)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _weights(shape: tuple[int, ...], seed: int, outliers: bool = True) -> torch.Tensor:
    """Gaussian weights with a few large outliers (as trained layers have), float32."""
    w = torch.randn(shape, generator=_gen(seed)) * 0.05
    if outliers:
        flat = w.view(-1)
        idx = torch.randint(0, flat.numel(), (max(1, flat.numel() // 200),), generator=_gen(seed + 1))
        flat[idx] *= 8
    return w


def _shape_problem(what: str, got: Any, expected: tuple[int, ...]) -> str | None:
    shape = tuple(getattr(got, "shape", ()))
    if shape != tuple(expected):
        return f"{what}: shape {shape}, expected {tuple(expected)}"
    return None


def _close_problem(what: str, got: torch.Tensor, expected: torch.Tensor, atol: float,
                   rtol: float = 1e-5) -> str | None:
    got, expected = torch.as_tensor(got).double(), expected.double()
    bad = ~torch.isclose(got, expected, rtol=rtol, atol=atol)
    if bad.any():
        i = tuple(int(v) for v in torch.nonzero(bad)[0])
        return (f"{what}: {int(bad.sum())} of {bad.numel()} values differ (max |diff| "
                f"{float((got - expected).abs().max()):.3g}); e.g. at {list(i)} got "
                f"{float(got[i]):.6g}, expected {float(expected[i]):.6g}")
    return None
