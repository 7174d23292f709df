"""Checks of lesson 04 (low rank)."""
from __future__ import annotations

import math
from collections.abc import Callable

import torch

from workbench.lessons import solutions as ref
from workbench.lessons.checks.core import CheckResult, _gen, _run, _shape_problem


def _decaying(shape: tuple[int, int], seed: int) -> torch.Tensor:
    """A matrix with singular values decaying like 1/(i+1)."""
    g = _gen(seed)
    u, _ = torch.linalg.qr(torch.randn(shape[0], min(shape), generator=g))
    v, _ = torch.linalg.qr(torch.randn(shape[1], min(shape), generator=g))
    s = 1.0 / torch.arange(1, min(shape) + 1)
    return (u * s) @ v.T


def check_truncated_svd(fn: Callable[[torch.Tensor, int], tuple]) -> CheckResult:
    """fn(weight, rank) -> (U_r (out, r), V_r (r, in)) whose product is the best rank-r
    approximation (any split of the singular values between the factors passes)."""
    def compare(f: Callable) -> list[str]:
        w = _decaying((40, 24), seed=17)
        problems = []
        for rank in (1, 5, 24):
            out = f(w, rank)
            if not isinstance(out, tuple) or len(out) != 2:
                return [f"rank {rank}: return the two factors (U_r, V_r)"]
            u, v = (torch.as_tensor(t).detach().double() for t in out)
            for what, t, shape in (("U_r", u, (40, rank)), ("V_r", v, (rank, 24))):
                if (p := _shape_problem(f"rank {rank}: {what}", t, shape)):
                    problems.append(p)
            if problems:
                return problems
            err = float(torch.linalg.matrix_norm(w.double() - u @ v))
            best = ref.frobenius_error(w, rank)
            if err > best * (1 + 1e-4) + 1e-6:
                problems.append(f"rank {rank}: ||W - U_r V_r||_F = {err:.4g}, the best possible "
                                f"is {best:.4g}; keep the {rank} largest singular values and "
                                f"put S into the factors (U S^1/2, S^1/2 V^T)")
        return problems
    return _run("truncated_svd", fn, ref.truncated_svd, compare)


def check_frobenius_error(fn: Callable[[torch.Tensor, int], float]) -> CheckResult:
    """fn(weight, rank) -> ||W - W_r||_F from the singular values."""
    def compare(f: Callable) -> list[str]:
        w = _decaying((40, 24), seed=18)
        problems = []
        for rank in (1, 5, 23, 24):
            got, want = float(f(w, rank)), ref.frobenius_error(w, rank)
            if not math.isclose(got, want, rel_tol=1e-4, abs_tol=1e-6):
                problems.append(f"rank {rank}: got {got:.5g}, expected {want:.5g} = sqrt(sum of "
                                f"s_i^2 for i > r)"
                                + (" (the square root is missing)" if
                                   math.isclose(got, want ** 2, rel_tol=1e-4) else ""))
        return problems
    return _run("frobenius_error", fn, ref.frobenius_error, compare)
