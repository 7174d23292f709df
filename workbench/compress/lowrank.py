"""Low rank: a Linear W (out, in) becomes up(down(x)) with down (r, in) and up (out, r).

Truncated SVD W = U S V^T (computed in float64): down = sqrt(S_r) V_r^T, up = U_r sqrt(S_r),
bias on `up`. Splitting sqrt(S) evenly gives both factors the same range, which suits later
quantization. Rank from `rank`, or the smallest r whose squared singular values keep `energy`
of the total (Eckart-Young: the best rank-r approximation in Frobenius norm).

The factorization only pays when r * (in + out) < in * out; otherwise the layer stays dense and
`choose_rank` says so (the caller reports it).
"""
from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict

import torch
from torch import nn


class LowRankLinear(nn.Sequential):
    """down: Linear(in -> rank, no bias), up: Linear(rank -> out). Reads like the Linear it
    replaces (`in_features`, `out_features`) so attention / FFN code keeps working."""

    def __init__(self, in_features: int, out_features: int, rank: int, bias: bool = True) -> None:
        super().__init__(OrderedDict(down=nn.Linear(in_features, rank, bias=False),
                                     up=nn.Linear(rank, out_features, bias=bias)))
        self.in_features = in_features
        self.out_features = out_features
        self.rank = rank


def singular_values(weight: torch.Tensor) -> torch.Tensor:
    """Descending singular values of a (out, in) matrix (float64)."""
    return torch.linalg.svdvals(weight.detach().double())


def rank_for_energy(singular: torch.Tensor, energy: float) -> int:
    """Smallest r with sum(s[:r]^2) >= energy * sum(s^2) (at least 1)."""
    power = singular.double().pow(2)
    kept = torch.cumsum(power, 0) / power.sum().clamp_min(1e-300)
    return max(1, min(int(torch.searchsorted(kept, torch.tensor(energy, dtype=kept.dtype)
                                             - 1e-12)) + 1, len(singular)))


def pays_off(in_features: int, out_features: int, rank: int) -> bool:
    """True when two factors hold fewer weights than the dense matrix."""
    return rank * (in_features + out_features) < in_features * out_features


def choose_rank(weight: torch.Tensor, rank: int | None = None, energy: float | None = None,
                singular: torch.Tensor | None = None) -> tuple[int, str | None]:
    """(rank, reason to stay dense or None) for a (out, in) weight and a rank or energy setting.

    With `rank` only the shape of `weight` is read; with `energy` its singular values are
    (pass them as `singular` when already known, e.g. from `spectra(model)`)."""
    out_features, in_features = weight.shape
    full = min(in_features, out_features)
    if rank is not None:
        r = min(rank, full)
    else:
        r = rank_for_energy(singular if singular is not None else singular_values(weight), energy)
    if not pays_off(in_features, out_features, r):
        return r, (f"rank {r} kept dense: {r} x ({in_features} + {out_features}) = "
                   f"{r * (in_features + out_features)} >= {in_features} x {out_features} = "
                   f"{in_features * out_features} weights")
    return r, None


def spectra(model: nn.Module) -> dict[str, torch.Tensor]:
    """Singular values of every Linear of `model` by path: compute once, then price energy
    settings with `size(..., spectra=...)` without an SVD per call."""
    return {path: singular_values(m.weight) for path, m in model.named_modules()
            if isinstance(m, nn.Linear)}


#: SVDs by weight content: a rank slider re-factorizes the same matrix at many ranks, and one
#: float64 SVD of a 1536 x 384 FFN weight costs ~65-80 ms on 2 cores; truncating a cached one
#: costs nothing. Keyed by a hash of the bytes, so a pruned (changed) weight gets its own entry.
_SVD_CACHE: OrderedDict[tuple, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = OrderedDict()
SVD_CACHE_ENTRIES = 64
_SVD_LOCK = threading.Lock()


def svd(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Thin float64 SVD (u, s, vh) of a (out, in) matrix, cached by content. Do not modify
    the returned tensors (they are shared)."""
    w = weight.detach().contiguous().cpu()
    key = (tuple(w.shape), str(w.dtype),
           hashlib.sha1(w.view(torch.uint8).numpy().tobytes()).hexdigest())
    with _SVD_LOCK:
        hit = _SVD_CACHE.get(key)
        if hit is not None:
            _SVD_CACHE.move_to_end(key)
            return hit
    result = torch.linalg.svd(w.double(), full_matrices=False)
    with _SVD_LOCK:
        _SVD_CACHE[key] = (result[0], result[1], result[2])
        while len(_SVD_CACHE) > SVD_CACHE_ENTRIES:
            _SVD_CACHE.popitem(last=False)
    return result[0], result[1], result[2]


def factorize(linear: nn.Linear, rank: int) -> LowRankLinear:
    """Truncated-SVD factors of `linear` at `rank` (any rank up to min(in, out); at full rank
    the output equals the original up to float32 rounding). `linear` is not changed."""
    w = linear.weight.detach()
    u, s, vh = svd(w)
    root = s[:rank].sqrt()
    new = LowRankLinear(linear.in_features, linear.out_features, rank,
                        bias=linear.bias is not None)
    with torch.no_grad():
        new.down.weight.copy_((root[:, None] * vh[:rank]).to(w.dtype))
        new.up.weight.copy_((u[:, :rank] * root[None, :]).to(w.dtype))
        if linear.bias is not None:
            new.up.bias.copy_(linear.bias.detach())
    new.train(linear.training)
    return new


def kept_energy(singular: torch.Tensor, rank: int) -> float:
    """Fraction of sum(s^2) the first `rank` singular values keep."""
    power = singular.double().pow(2)
    return float(power[:rank].sum() / power.sum())
