"""Lessons 02a and 02b checks: pruning masks, structures, importance."""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from workbench.compress.prune import count_to_remove
from workbench.lessons import solutions as ref
from workbench.lessons.checks.core import (CheckResult, _close_problem, _gen, _run,
                                           _shape_problem, _weights)


def check_magnitude_mask(fn: Callable[[torch.Tensor, float], torch.Tensor]) -> CheckResult:
    """fn(weight, amount) -> bool mask, False for the round(amount * n) smallest |w|."""
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
