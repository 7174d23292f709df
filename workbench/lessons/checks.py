"""Checks for the lessons' implement-it-yourself cells: the learner's function against the
reference in `workbench.lessons.solutions`, on fixed seeded inputs, saying *what* is wrong.

    result = check_magnitude_mask(magnitude_mask)   # shows ✓ or ✗ with the problems found
    mask_fn = result.function                        # the learner's function if it passed,
                                                     # else the reference (the lesson goes on)

A learner function that raises NotImplementedError (the stub as committed) is reported as "not
done yet"; the check then runs itself on the reference and raises LessonCheckError if the
reference fails it (that would be a bug of the check, not of the learner). So every headless run
of a lesson also proves that its checks pass with the solutions.

Comparisons use tolerances (float rounding differs between correct implementations); where
correct answers may legitimately differ (tie-breaking, k-means local optima) the check tests the
defining property instead of equality. Inputs are small and seeded: a check takes milliseconds.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from workbench.errors import WorkbenchError
from workbench.lessons import solutions as ref

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


# ---- lesson 00 -----------------------------------------------------------------------------------

WER_CASES = [("turn on the light", "turn on the light"),
             ("turn on the kitchen light", "turn on the light"),             # 1 deletion
             ("set a timer", "set the timer please"),                        # 1 sub + 1 ins
             ("call mom", "call tom now"),                                   # 1 sub + 1 ins
             ("yes", "no no no")]                                            # WER 3 > 1


def check_wer(fn: Callable[[str, str], float]) -> CheckResult:
    """fn(reference, hypothesis) -> WER = (S + D + I) / N words."""
    def compare(f: Callable) -> list[str]:
        problems = []
        for r, h in WER_CASES:
            got, want = f(r, h), ref.wer(r, h)
            if not isinstance(got, (int, float)) or not math.isclose(got, want, abs_tol=1e-9):
                hint = (" (insertions count too: WER has no upper bound of 1)" if want > 1 else
                        " (count substitutions, deletions and insertions; divide by the number "
                        "of reference words)")
                problems.append(f"wer({r!r}, {h!r}) = {got!r}, expected {want:.4g}{hint}")
        return problems
    return _run("wer", fn, ref.wer, compare)


# ---- lesson 01 -----------------------------------------------------------------------------------

MAC_CASES = [(100, 384, 1536), (1500, 384, 1536), (7, 8, 32)]


def check_block_macs(fn: Callable[[int, int, int], dict]) -> CheckResult:
    """fn(frames, d_model, d_ff) -> {"projections", "scores", "ffn"} MACs of one block."""
    def compare(f: Callable) -> list[str]:
        problems = []
        for case in MAC_CASES:
            got, want = f(*case), ref.block_macs(*case)
            if not isinstance(got, dict) or set(got) != set(want):
                return [f"block_macs{case} should return a dict with keys {sorted(want)}, "
                        f"got {got!r}"]
            for key in want:
                if int(got[key]) != want[key]:
                    problems.append(f"block_macs{case}[{key!r}] = {got[key]:,}, expected "
                                    f"{want[key]:,} (ratio {got[key] / want[key]:.3g})")
        return problems
    return _run("block_macs", fn, ref.block_macs, compare)


def check_crossover_frames(fn: Callable[[int, int], int]) -> CheckResult:
    """fn(d_model, d_ff) -> smallest T where the scores' MACs exceed the FFN's."""
    def compare(f: Callable) -> list[str]:
        problems = []
        for d, dff in ((384, 1536), (512, 2048), (64, 100)):
            got, want = f(d, dff), ref.crossover_frames(d, dff)
            if got != want:
                macs = ref.block_macs(int(got), d, dff) if isinstance(got, int) and got > 0 \
                    else None
                problems.append(f"crossover_frames({d}, {dff}) = {got!r}, expected {want}"
                                + (f" (at T = {got}: scores {macs['scores']:,} vs FFN "
                                   f"{macs['ffn']:,} MACs)" if macs else ""))
        return problems
    return _run("crossover_frames", fn, ref.crossover_frames, compare)


# ---- lesson 02a ----------------------------------------------------------------------------------

def check_magnitude_mask(fn: Callable[[torch.Tensor, float], torch.Tensor]) -> CheckResult:
    """fn(weight, amount) -> bool mask, False for the round(amount * n) smallest |w|."""
    from workbench.compress.prune import count_to_remove

    def compare(f: Callable) -> list[str]:
        problems = []
        for amount in (0.0, 0.3, 0.5, 0.9):
            w = _weights((48, 64), seed=3)
            before = w.clone()
            mask = f(w, amount)
            if not torch.equal(w, before):
                return ["the function changed the weight it was given; return a new mask"]
            if (p := _shape_problem(f"mask at amount {amount}", mask, w.shape)):
                return [p]
            mask = torch.as_tensor(mask)
            if mask.dtype != torch.bool and not bool(((mask == 0) | (mask == 1)).all()):
                return [f"mask at amount {amount}: dtype {mask.dtype} with values other than "
                        f"0 / 1; return a bool tensor (True = keep)"]
            keep = mask.bool()
            want = count_to_remove(w.numel(), amount, keep_one=False)
            removed = int((~keep).sum())
            if removed != want:
                problems.append(f"amount {amount}: {removed} weights removed, expected "
                                f"round({amount} x {w.numel()}) = {want}")
                continue
            if removed and keep.any():
                dropped, kept = w.abs()[~keep].max(), w.abs()[keep].min()
                if dropped > kept:
                    problems.append(f"amount {amount}: a weight with |w| = {float(dropped):.4g} "
                                    f"was removed while one with |w| = {float(kept):.4g} was "
                                    f"kept; remove the smallest magnitudes |w|, not values w")
        return problems
    return _run("magnitude_mask", fn, ref.magnitude_mask, compare)


def check_nm_mask(fn: Callable[[torch.Tensor, int, int], torch.Tensor]) -> CheckResult:
    """fn(weight, n, m) -> bool mask keeping the n largest |w| in each group of m inputs."""
    def compare(f: Callable) -> list[str]:
        problems = []
        w = _weights((12, 32), seed=4)
        for n, m in ((2, 4), (1, 4), (4, 8)):
            mask = f(w, n, m)
            if (p := _shape_problem(f"{n}:{m} mask", mask, w.shape)):
                return [p]
            keep = torch.as_tensor(mask).bool()
            per_group = keep.reshape(w.shape[0], -1, m).sum(dim=2)
            if not bool((per_group == n).all()):
                bad = torch.nonzero(per_group != n)[0].tolist()
                problems.append(f"{n}:{m}: row {bad[0]}, group {bad[1]} (inputs "
                                f"{bad[1] * m}..{bad[1] * m + m - 1}) keeps {int(per_group[tuple(bad)])}"
                                f" weights, expected exactly {n}; groups are {m} consecutive inputs "
                                f"of one output row (weight.reshape(out, in // {m}, {m}))")
                continue
            groups, kept = w.abs().reshape(w.shape[0], -1, m), keep.reshape(w.shape[0], -1, m)
            low_kept = groups.masked_fill(~kept, float("inf")).min(dim=2).values
            high_dropped = groups.masked_fill(kept, -1.0).max(dim=2).values
            if bool((high_dropped > low_kept).any()):
                problems.append(f"{n}:{m}: in some group a larger |w| was removed while a smaller "
                                f"one was kept; keep the {n} largest magnitudes of each group")
        return problems
    return _run("nm_mask", fn, ref.nm_mask, compare)


def _ffn(seed: int, d: int = 8, d_ff: int = 32) -> tuple[nn.Linear, nn.Linear]:
    torch.manual_seed(seed)
    return nn.Linear(d, d_ff), nn.Linear(d_ff, d)


def check_prune_ffn(fn: Callable) -> CheckResult:
    """fn(fc1, fc2, keep) -> (new fc1, new fc2) with only the hidden neurons `keep`."""
    def compare(f: Callable) -> list[str]:
        fc1, fc2 = _ffn(5)
        keep = torch.tensor([0, 3, 4, 9, 17, 30])
        saved = [p.detach().clone() for p in (*fc1.parameters(), *fc2.parameters())]
        new1, new2 = f(fc1, fc2, keep)
        want1, want2 = ref.prune_ffn(fc1, fc2, keep)
        if not all(torch.equal(a, b) for a, b in
                   zip(saved, (*fc1.parameters(), *fc2.parameters()))):
            return ["the original fc1 / fc2 were changed; build new layers (copy.deepcopy)"]
        if not isinstance(new1, nn.Linear) or not isinstance(new2, nn.Linear):
            return [f"return two nn.Linear, got {type(new1).__name__}, {type(new2).__name__}"]
        problems = [p for p in (
            _shape_problem("fc1.weight (keeps rows: one per neuron)", new1.weight,
                           want1.weight.shape),
            _shape_problem("fc2.weight (keeps columns: one per neuron)", new2.weight,
                           want2.weight.shape)) if p]
        if problems:
            return problems
        for what, got, want in (("fc1.weight", new1.weight, want1.weight),
                                ("fc2.weight", new2.weight, want2.weight)):
            if (p := _close_problem(what, got.detach(), want.detach(), atol=0)):
                problems.append(p + " (keep the rows / columns listed in `keep`, in order)")
        if new1.bias is None or new1.bias.shape != want1.bias.shape:
            problems.append(f"fc1.bias: shape {None if new1.bias is None else tuple(new1.bias.shape)},"
                            f" expected {tuple(want1.bias.shape)} (the bias goes with its neuron)")
        elif (p := _close_problem("fc1.bias", new1.bias.detach(), want1.bias.detach(), atol=0)):
            problems.append(p)
        if new2.bias is None or not torch.equal(new2.bias.detach(), fc2.bias.detach()):
            problems.append("fc2.bias must stay as it is (one per output, not per neuron)")
        if (new1.in_features, new1.out_features, new2.in_features, new2.out_features) != \
                (want1.in_features, want1.out_features, want2.in_features, want2.out_features):
            problems.append("set in_features / out_features to the new shapes")
        if not problems:
            x = torch.randn(3, fc1.in_features, generator=_gen(6))
            with torch.no_grad():
                y, y_ref = new2(torch.relu(new1(x))), want2(torch.relu(want1(x)))
            if (p := _close_problem("output of the pruned FFN", y, y_ref, atol=1e-6)):
                problems.append(p)
        return problems
    return _run("prune_ffn", fn, ref.prune_ffn, compare)


def check_neuron_scores(fn: Callable[[nn.Linear, nn.Linear], torch.Tensor]) -> CheckResult:
    """fn(fc1, fc2) -> (d_ff,) L2 norm of each neuron's weights (fc1 row + bias, fc2 column)."""
    def compare(f: Callable) -> list[str]:
        fc1, fc2 = _ffn(7)
        got, want = f(fc1, fc2), ref.neuron_scores(fc1, fc2)
        if (p := _shape_problem("scores", got, want.shape)):
            return [p + " (one score per hidden neuron = fc1.out_features)"]
        p = _close_problem("scores", torch.as_tensor(got).detach(), want, atol=1e-6)
        if p:
            no_bias = fc1.weight.detach().pow(2).sum(1) + fc2.weight.detach().pow(2).sum(0)
            if torch.allclose(torch.as_tensor(got).detach().double(), no_bias.sqrt().double(),
                              atol=1e-6):
                return [p + "; the fc1 bias of each neuron is missing"]
            return [p + " (rows of fc1.weight and columns of fc2.weight, L2 norm together)"]
        return []
    return _run("neuron_scores", fn, ref.neuron_scores, compare)


# ---- lesson 02b ----------------------------------------------------------------------------------

def check_taylor_neuron_scores(fn: Callable) -> CheckResult:
    """fn(fc1, fc2, grads) -> (d_ff,) sum over each neuron's weights of |w * dL/dw|."""
    def compare(f: Callable) -> list[str]:
        fc1, fc2 = _ffn(8)
        g = _gen(9)
        grads = {"fc1.weight": torch.randn(fc1.weight.shape, generator=g),
                 "fc1.bias": torch.randn(fc1.bias.shape, generator=g),
                 "fc2.weight": torch.randn(fc2.weight.shape, generator=g)}
        got, want = f(fc1, fc2, grads), ref.taylor_neuron_scores(fc1, fc2, grads)
        if (p := _shape_problem("scores", got, want.shape)):
            return [p]
        p = _close_problem("scores", torch.as_tensor(got).detach(), want, atol=1e-5)
        return [p + " (|w * g| summed over fc1 row j, bias j and fc2 column j; the absolute "
                    "value of each product, not of the sum)"] if p else []
    return _run("taylor_neuron_scores", fn, ref.taylor_neuron_scores, compare)


# ---- lesson 03 -----------------------------------------------------------------------------------

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


# ---- lesson 04 -----------------------------------------------------------------------------------

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


# ---- lesson 05 -----------------------------------------------------------------------------------

def _roofline_cases() -> list[tuple[str, dict, float]]:
    """(label, kwargs, expected ms) for real layer kinds priced by `latency.cost.layer_latency`
    on the Raspberry Pi 4 profile: the workbench's own roofline is the reference."""
    from workbench.latency.cost import OPS_PER_LAYER, bytes_moved, layer_latency
    from workbench.latency.devices import load_device
    from workbench.latency.table import EffectiveLayer

    dev = load_device("rpi4")
    t, d, dff = 200, 384, 1536
    layers = [
        ("FFN fc1, fp32, 4 s of audio", EffectiveLayer(
            "blocks.0.mlp.fc1", "ffn", "matmul", t * d * dff, d * dff + dff, 32, 0.0,
            4 * t * d, 4 * t * dff, t, d, dff)),
        ("FFN fc1, int8 weights", EffectiveLayer(
            "blocks.0.mlp.fc1", "ffn", "matmul", t * d * dff, d * dff + dff, 8, 0.0,
            4 * t * d, 4 * t * dff, t, d, dff)),
        ("a matmul on one frame (weights dominate)", EffectiveLayer(
            "blocks.0.mlp.fc2", "ffn", "matmul", dff * d, dff * d + d, 32, 0.0,
            4 * dff, 4 * d, 1, dff, d)),
    ]
    cases = []
    for label, layer in layers:
        eff = dev.efficiency
        op_eff = eff.matmul_int8 if layer.precision == "int8" else eff.matmul_fp32
        kwargs = dict(flops=2 * layer.macs, bytes_moved=bytes_moved(layer, dev),
                      peak_gops=dev.peak_ops(layer.precision) / 1e9,
                      bandwidth_gbs=dev.memory_bandwidth_gbs, compute_efficiency=op_eff,
                      memory_efficiency=eff.memory,
                      overhead_ms=OPS_PER_LAYER[layer.op] * dev.overhead_us_per_op * 1e-3)
        cases.append((label, kwargs, layer_latency(layer, dev).time_ms))
    return cases


def check_roofline_ms(fn: Callable[..., float]) -> CheckResult:
    """fn(flops, bytes_moved, peak_gops, bandwidth_gbs, compute_efficiency, memory_efficiency,
    overhead_ms) -> ms; compared with the workbench's latency model on the Pi 4 profile."""
    def compare(f: Callable) -> list[str]:
        problems = []
        for label, kwargs, want in _roofline_cases():
            got = float(f(**kwargs))
            if not math.isclose(got, want, rel_tol=1e-6):
                compute = kwargs["flops"] / (kwargs["peak_gops"] * 1e9
                                             * kwargs["compute_efficiency"]) * 1e3
                memory = kwargs["bytes_moved"] / (kwargs["bandwidth_gbs"] * 1e9
                                                  * kwargs["memory_efficiency"]) * 1e3
                problems.append(f"{label}: got {got:.4g} ms, the latency model says {want:.4g} "
                                f"ms (compute {compute:.4g} ms, memory {memory:.4g} ms, overhead "
                                f"{kwargs['overhead_ms']:.3g} ms: the larger of the two plus the "
                                f"overhead; GB/s and GOP/s are 1e9)")
        return problems
    return _run("roofline_ms", fn, ref.roofline_ms, compare)


# ---- lesson 06 -----------------------------------------------------------------------------------

def check_int8_bytes(fn: Callable[[int, int, str], int]) -> CheckResult:
    """fn(out, in, granularity) -> bytes; compared with `workbench.size.storage_bytes`."""
    from workbench.size import WeightSpec, storage_bytes

    def compare(f: Callable) -> list[str]:
        problems = []
        for out, k, gran in ((1536, 384, "per_channel"), (384, 1536, "per_channel"),
                             (384, 384, "per_tensor")):
            got = f(out, k, gran)
            want = storage_bytes(WeightSpec(out, k, 8, gran))["dense"]
            if got != want:
                problems.append(f"{out} x {k}, {gran}: got {got!r}, the exporter stores {want:,} "
                                f"bytes (1 per weight + a 4-byte scale and a 1-byte zero point "
                                f"per group)")
        return problems
    return _run("int8_bytes", fn, ref.int8_bytes, compare)


# ---- lesson 07 -----------------------------------------------------------------------------------

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


# ---- lesson 10 -----------------------------------------------------------------------------------

def check_add_noise(fn: Callable[[torch.Tensor, torch.Tensor, float], torch.Tensor]) -> CheckResult:
    """fn(clean, noise, snr_db) -> clean + scaled noise at exactly that SNR."""
    def compare(f: Callable) -> list[str]:
        g = _gen(19)
        clean = torch.sin(torch.arange(16000) / 7.0) * 0.3
        noise = torch.randn(16000, generator=g) * 0.05
        problems = []
        for snr in (20.0, 5.0, 0.0, -5.0):
            out = torch.as_tensor(f(clean, noise, snr)).double()
            if (p := _shape_problem(f"SNR {snr}", out, clean.shape)):
                return [p]
            added = out - clean.double()
            measured = 10 * math.log10(float(clean.double().pow(2).mean())
                                       / float(added.pow(2).mean()))
            corr = float(torch.nn.functional.cosine_similarity(added, noise.double(), dim=0))
            if corr < 0.999:
                problems.append(f"SNR {snr}: what was added is not a scaled copy of the noise "
                                f"(cosine {corr:.3f})")
            elif abs(measured - snr) > 0.01:
                problems.append(f"SNR {snr} dB asked, {measured:.2f} dB measured "
                                f"(P = mean square; gain = sqrt(P_clean / (P_noise 10^(snr/10))))")
        return problems
    return _run("add_noise", fn, ref.add_noise, compare)


# ---- lesson 11 -----------------------------------------------------------------------------------

def check_first_partial_ms(fn: Callable[[float, float, float, float], float]) -> CheckResult:
    """fn(chunk_s, lookahead_s, stem_s, compute_ms) -> ms until the first partial transcript."""
    def compare(f: Callable) -> list[str]:
        problems = []
        for args in ((0.5, 0.0, 0.02, 41.0), (1.0, 0.25, 0.02, 80.0)):
            got, want = float(f(*args)), ref.first_partial_ms(*args)
            if not math.isclose(got, want, rel_tol=1e-9):
                problems.append(f"first_partial_ms{args} = {got:.4g}, expected {want:.4g} "
                                f"(seconds of audio to wait for, in ms, plus the compute)")
        return problems
    return _run("first_partial_ms", fn, ref.first_partial_ms, compare)


# ---- lesson 08 (capstone) -----------------------------------------------------------------------

def check_bits_by_role(fn: Callable[[dict, float], dict]) -> CheckResult:
    """fn(delta_wer_at_4_bits, tolerance) -> {role: 4 or 8}."""
    def compare(f: Callable) -> list[str]:
        problems = []
        cases = [({"front-end": 0.03, "attention": 0.004, "ffn": 0.01, "head": 0.0}, 0.01),
                 ({"attention": -0.002, "ffn": 0.2}, 0.0), ({"ffn": 0.05}, 0.1)]
        for deltas, tol in cases:
            got, want = f(dict(deltas), tol), ref.bits_by_role(deltas, tol)
            if not isinstance(got, dict) or set(got) != set(want):
                return [f"return one entry per role {sorted(want)}, got {got!r}"]
            for role in want:
                if got[role] != want[role]:
                    problems.append(f"tolerance {tol}: {role} (ΔWER {deltas[role]:+.3f} at 4 bits) "
                                    f"-> {got[role]}, expected {want[role]} (4 bits when ΔWER <= "
                                    f"tolerance, the boundary included)")
        return problems
    return _run("bits_by_role", fn, ref.bits_by_role, compare)


# ---- lesson 12 -----------------------------------------------------------------------------------

def check_whisper_ms(fn: Callable[[float, float, float, int], float]) -> CheckResult:
    """fn(encoder_ms, cross_kv_ms, per_token_ms, steps) -> ms for one utterance."""
    def compare(f: Callable) -> list[str]:
        problems = []
        # distinct magnitudes, so each common mistake gives a different number
        for args in ((120.0, 9.0, 30.0, 12), (40.0, 3.5, 11.0, 3), (900.0, 70.0, 5.0, 40)):
            enc, cross, tok, steps = args
            got, want = float(f(*args)), ref.whisper_ms(*args)
            if math.isclose(got, want, rel_tol=1e-9):
                continue
            hint = ""
            if math.isclose(got, enc + steps * (cross + tok), rel_tol=1e-9):
                hint = ("; the cross-attention keys/values of the encoder output are computed "
                        "once per utterance, not once per step")
            elif math.isclose(got, steps * (enc + cross + tok), rel_tol=1e-9):
                hint = "; the encoder runs once per utterance, only the decoder runs per step"
            elif math.isclose(got, enc + cross + tok, rel_tol=1e-9):
                hint = "; one decoder step per token: multiply the per-token time by the steps"
            problems.append(f"whisper_ms{args} = {got:.6g}, expected {want:.6g}{hint}")
        return problems
    return _run("whisper_ms", fn, ref.whisper_ms, compare)


#: Every check by the name of the function it checks (tests run each on the reference and on a
#: wrong answer).
CHECKS: dict[str, Callable[[Callable], CheckResult]] = {
    "wer": check_wer, "block_macs": check_block_macs, "crossover_frames": check_crossover_frames,
    "magnitude_mask": check_magnitude_mask, "nm_mask": check_nm_mask, "prune_ffn": check_prune_ffn,
    "neuron_scores": check_neuron_scores, "taylor_neuron_scores": check_taylor_neuron_scores,
    "linear_quantize": check_linear_quantize, "sqnr_db": check_sqnr_db,
    "kmeans_quantize": check_kmeans_quantize, "integer_linear": check_integer_linear,
    "truncated_svd": check_truncated_svd, "frobenius_error": check_frobenius_error,
    "roofline_ms": check_roofline_ms, "int8_bytes": check_int8_bytes,
    "linear_shapes": check_linear_shapes, "add_noise": check_add_noise,
    "first_partial_ms": check_first_partial_ms, "bits_by_role": check_bits_by_role,
    "whisper_ms": check_whisper_ms,
}
