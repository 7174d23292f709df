"""Checks of lesson 09 (efficient attention)."""
from __future__ import annotations

from collections.abc import Callable

import torch

from workbench.lessons import solutions as ref
from workbench.lessons.checks.core import (CheckResult, _close_problem, _gen, _run,
                                           _shape_problem)


#: (frames, window, heads, head_dim): whole blocks, a partial last block, Whisper's 30 s at a 1 s
#: window, and fewer frames than one window.
WINDOW_MAC_CASES = [(150, 50, 6, 64), (151, 50, 6, 64), (1500, 50, 6, 64), (37, 10, 4, 16),
                    (10, 25, 2, 8)]


def check_windowed_scores_macs(fn: Callable[[int, int, int, int], int]) -> CheckResult:
    """fn(frames, window, heads, head_dim) -> MACs of Q K^T and A V in blocked local attention."""
    def compare(f: Callable) -> list[str]:
        problems = []
        for args in WINDOW_MAC_CASES:
            t, w, h, dh = args
            got, want = f(*args), ref.windowed_scores_macs(*args)
            if isinstance(got, int | float) and int(got) == want:
                continue
            t_pad = -(-t // w) * w
            hint = ""
            if got == 2 * h * t * 3 * w * dh:
                hint = ("; pad T up to whole blocks first: the last, partial block of queries "
                        "is computed in full (T_pad = ceil(T / W) * W)")
            elif got == h * t_pad * 3 * w * dh:
                hint = "; there are two products, Q K^T and A V"
            elif got in (2 * h * t_pad * (2 * w + 1) * dh, 2 * h * t * (2 * w + 1) * dh):
                hint = ("; a block of queries meets three whole blocks of W keys (its own and "
                        "both neighbours), not a band of 2W + 1")
            problems.append(f"windowed_scores_macs{args} = {got!r}, expected {want:,}{hint}")
        return problems
    return _run("windowed_scores_macs", fn, ref.windowed_scores_macs, compare)


def _qkv(seed: int, shape: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = _gen(seed)
    return tuple(torch.randn(shape, generator=g) for _ in range(3))   # type: ignore[return-value]


def check_local_attention(fn: Callable[..., torch.Tensor]) -> CheckResult:
    """fn(q, k, v, window) -> (B, H, T, Dh) block-local softmax attention."""
    def compare(f: Callable) -> list[str]:
        problems = []
        # a partial last block, whole blocks, and T shorter than one window (= full attention)
        for seed, shape, window in ((31, (2, 3, 23, 8), 5), (32, (1, 2, 20, 4), 4),
                                    (33, (1, 2, 7, 4), 10)):
            q, k, v = _qkv(seed, shape)
            before = (q.clone(), k.clone(), v.clone())
            got = f(q, k, v, window)
            if not all(torch.equal(a, b) for a, b in zip((q, k, v), before)):
                return ["the function changed q, k or v in place; work on new tensors"]
            what = f"T = {shape[2]}, window {window}"
            if (p := _shape_problem(what, got, shape)):
                return [p]
            p = _close_problem(what, got, ref.local_attention(q, k, v, window), atol=1e-5)
            if p:
                problems.append(p + " (frame i sees frame j when their blocks are the same or "
                                    "neighbours: |i // window - j // window| <= 1; scale the "
                                    "scores by 1 / sqrt(Dh))")
        return problems
    return _run("local_attention", fn, ref.local_attention, compare)


def check_linear_attention(fn: Callable[..., torch.Tensor]) -> CheckResult:
    """fn(q, k, v) -> (B, H, T, Dh) kernelized attention with phi = elu + 1."""
    def compare(f: Callable) -> list[str]:
        problems = []
        for seed, shape in ((41, (2, 3, 17, 8)), (42, (1, 1, 5, 4))):
            q, k, v = _qkv(seed, shape)
            got = f(q, k, v)
            what = f"shape {shape}"
            if (p := _shape_problem(what, got, shape)):
                return [p]
            p = _close_problem(what, got, ref.linear_attention(q, k, v), atol=1e-4, rtol=1e-4)
            if p:
                fq = torch.nn.functional.elu(q) + 1
                fk = torch.nn.functional.elu(k) + 1
                unnormalised = torch.matmul(fq, torch.matmul(fk.transpose(-1, -2), v))
                hint = (" (divide by the normaliser phi(q_i) . sum_j phi(k_j): without it the "
                        "output grows with T)"
                        if torch.allclose(torch.as_tensor(got).float(), unnormalised, rtol=1e-4,
                                          atol=1e-4)
                        else " (phi(x) = elu(x) + 1 on q and k; v is not mapped; the normaliser "
                             "is phi(q_i) . sum_j phi(k_j))")
                problems.append(p + hint)
        return problems
    return _run("linear_attention", fn, ref.linear_attention, compare)
