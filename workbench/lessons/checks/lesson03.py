"""Checks of lesson 03 (quantization, integer GEMM)."""
from __future__ import annotations

import math
from collections.abc import Callable

import torch

from workbench.lessons import solutions as ref
from workbench.lessons.checks.core import CheckResult, _gen, _run, _shape_problem, _weights


QUANT_CASES = [(8, "per_tensor", True), (4, "per_channel", True), (4, "per_channel", False),
               (3, "per_tensor", False)]


def check_linear_quantize(fn: Callable) -> CheckResult:
    """fn(weight, bits, granularity, symmetric) -> (w', scale, zero_point)."""
    def compare(f: Callable) -> list[str]:
        w = _weights((16, 40), seed=11) + 0.01   # lopsided: asymmetric grids matter
        problems = []
        for bits, gran, sym in QUANT_CASES:
            case = f"{bits} bits, {gran}, {'symmetric' if sym else 'asymmetric'}"
            out = f(w, bits, gran, sym)
            if not isinstance(out, tuple) or len(out) != 3:
                return [f"{case}: return (w_dequantized, scale, zero_point)"]
            got, scale, zp = out
            want, want_scale, want_zp = ref.linear_quantize(w, bits, gran, sym)
            if (p := _shape_problem(f"{case}: w'", got, w.shape)):
                problems.append(p)
                continue
            got = torch.as_tensor(got).detach().double()
            if torch.as_tensor(scale).numel() != want_scale.numel():
                per = "tensor" if gran == "per_tensor" else "output channel"
                problems.append(f"{case}: {torch.as_tensor(scale).numel()} scales, expected "
                                f"{want_scale.numel()} (one per {per})")
                continue
            if sym and bool((torch.as_tensor(zp) != 0).any()):
                problems.append(f"{case}: a symmetric grid has zero point 0")
            rows = got.reshape(1, -1) if gran == "per_tensor" else got.reshape(w.shape[0], -1)
            levels = max(len(torch.unique(r)) for r in rows)
            if levels > 2 ** bits:
                problems.append(f"{case}: a group uses {levels} levels > 2^{bits}; clamp q to "
                                f"the {bits}-bit range")
                continue
            diff = (got - want.double()).abs()
            step = torch.as_tensor(want_scale).double().reshape(-1).max()
            off = diff > 1e-6 + 1e-5 * want.double().abs()
            # Correct implementations may round exact ties differently: allow a few one-step
            # differences (< 0.5 % of the weights), nothing more.
            if off.any() and (off.float().mean() > 0.005 or diff.max() > step * 1.001):
                i = tuple(int(v) for v in torch.nonzero(off)[0])
                problems.append(f"{case}: {int(off.sum())} of {off.numel()} values differ from "
                                f"the reference (max |diff| {float(diff.max()):.3g}, one step = "
                                f"{float(step):.3g}); e.g. w{list(i)} = {float(w[i]):.5g} -> got "
                                f"{float(got[i]):.5g}, expected {float(want[i]):.5g}. "
                                + ("Symmetric: scale = max|w| / (2^(b-1) - 1)." if sym else
                                   "Asymmetric: range [min(w, 0), max(w, 0)], scale = range / "
                                   "(2^b - 1), zero point = round(-min / scale)."))
        return problems
    return _run("linear_quantize", fn, ref.linear_quantize, compare)


def check_sqnr_db(fn: Callable[[torch.Tensor, torch.Tensor], float]) -> CheckResult:
    """fn(reference, approx) -> SQNR in dB."""
    def compare(f: Callable) -> list[str]:
        w = _weights((16, 40), seed=12)
        problems = []
        for noise in (0.1, 0.01, 0.001):
            approx = w + noise * torch.randn(w.shape, generator=_gen(13))
            got, want = f(w, approx), ref.sqnr_db(w, approx)
            if not math.isclose(float(got), want, abs_tol=1e-3):
                problems.append(f"noise {noise}: got {float(got):.3f} dB, expected {want:.3f} dB"
                                + (" (10 log10 of a power ratio, not 20 log10)"
                                   if math.isclose(float(got), 2 * want, rel_tol=1e-3) else ""))
        return problems
    return _run("sqnr_db", fn, ref.sqnr_db, compare)


def check_kmeans_quantize(fn: Callable) -> CheckResult:
    """fn(weight, bits) -> (w', codebook, labels). Tested by the properties of a k-means fixed
    point (each weight at its nearest centroid, each centroid the mean of its weights) and by its
    SQNR against the reference (local optima differ)."""
    def compare(f: Callable) -> list[str]:
        problems = []
        w = _weights((24, 40), seed=14)
        for bits in (2, 3):
            got, codebook, labels = f(w, bits)
            want, _, _ = ref.kmeans_quantize(w, bits)
            if (p := _shape_problem(f"{bits} bits: w'", got, w.shape)):
                return [p]
            got = torch.as_tensor(got).detach().double()
            codebook = torch.as_tensor(codebook).detach().double().flatten()
            labels = torch.as_tensor(labels).long()
            if codebook.numel() > 2 ** bits:
                problems.append(f"{bits} bits: codebook of {codebook.numel()} > 2^{bits} entries")
                continue
            if labels.shape != w.shape or not torch.allclose(codebook[labels], got, atol=1e-6):
                problems.append(f"{bits} bits: w' must equal codebook[labels] (labels shaped "
                                f"like the weight)")
                continue
            wd = w.double()
            nearest = (wd.flatten()[:, None] - codebook[None, :]).abs().min(dim=1).values
            if ((wd.flatten() - got.flatten()).abs() > nearest + 1e-6).any():
                problems.append(f"{bits} bits: some weights are not assigned to their nearest "
                                f"centroid (assignment step)")
            for c in range(codebook.numel()):
                members = wd[labels == c]
                if members.numel() and abs(float(members.mean() - codebook[c])) > \
                        1e-3 * float(wd.max() - wd.min()):
                    problems.append(f"{bits} bits: centroid {c} = {float(codebook[c]):.4g} is not "
                                    f"the mean of its weights ({float(members.mean()):.4g}): "
                                    f"iterate the update step until it settles")
                    break
            s_got, s_want = ref.sqnr_db(w, got), ref.sqnr_db(w, want)
            if s_got < s_want - 1.0:
                problems.append(f"{bits} bits: SQNR {s_got:.1f} dB, the reference reaches "
                                f"{s_want:.1f} dB (initialise the centroids over [min, max])")
        return problems
    return _run("kmeans_quantize", fn, ref.kmeans_quantize, compare)


def _gemm_case(seed: int, zp_w: int) -> dict:
    g = _gen(seed)
    return dict(x_q=torch.randint(0, 256, (5, 24), generator=g),
                w_q=torch.randint(-127, 128, (7, 24), generator=g),
                s_x=0.02, zp_x=131, s_w=0.004, zp_w=zp_w, s_y=0.05, zp_y=120)


def check_integer_linear(fn: Callable) -> CheckResult:
    """fn(x_q, w_q, s_x, zp_x, s_w, zp_w, s_y, zp_y) -> y_q (uint8 range, integer tensor)."""
    def compare(f: Callable) -> list[str]:
        problems = []
        for seed, zp_w in ((15, 0), (16, 3)):
            case = _gemm_case(seed, zp_w)
            got = torch.as_tensor(f(**case))
            want = ref.integer_linear(**case)
            if (p := _shape_problem(f"zp_w={zp_w}: y_q", got, want.shape)):
                return [p]
            if got.is_floating_point() and not torch.equal(got, got.round()):
                problems.append(f"zp_w={zp_w}: y_q has fractions; round and clamp to integers")
                continue
            if int(got.min()) < 0 or int(got.max()) > 255:
                problems.append(f"zp_w={zp_w}: values outside [0, 255]; clamp after adding zp_y")
                continue
            diff = (got.long() - want.long()).abs()
            # One-step differences from a different rounding of exact .5 ties are allowed.
            if int(diff.max()) > 1 or float((diff > 0).float().mean()) > 0.02:
                problems.append(f"zp_w={zp_w}: {int((diff > 0).sum())} of {diff.numel()} outputs "
                                f"differ (max {int(diff.max())} steps); check the zero-point "
                                f"cross terms (-zp_w sum x_q - zp_x sum w_q + K zp_x zp_w) and "
                                f"the rescale by s_x s_w / s_y")
        return problems
    return _run("integer_linear", fn, ref.integer_linear, compare)
