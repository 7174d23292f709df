"""Architecture swaps: drop-in replacements for a block's attention or FFN, built from its weights.

    WindowedSelfAttention   local attention in blocks of W frames: each query sees its own block
                            and both neighbours (>= W frames of context each side, < 2W);
                            cost 2 * H * T_pad * 3W * Dh MACs: linear in T (T_pad = T rounded up
                            to a multiple of W). Blocked local attention as in Longformer /
                            BigBird (Beltagy et al. 2020, arXiv:2004.05150; Zaheer et al. 2020,
                            arXiv:2007.14062), without their global tokens.
    LinearSelfAttention     softmax(q k^T) v replaced by phi(q) (phi(k)^T v) / phi(q) sum phi(k),
                            phi = elu + 1 (Katharopoulos et al. 2020, arXiv:2006.16236): the
                            (Dh, Dh) summary costs 2 * H * T * Dh (Dh + 1) MACs, no (T, T)
                            matrix.
    PerformerSelfAttention  the same with FAVOR+ positive random features that approximate the
                            softmax kernel exp(q.k / sqrt(Dh)) (Choromanski et al. 2021,
                            arXiv:2009.14794): phi(x) = exp(w x - |x|^2 / 2) / sqrt(m), m
                            orthogonal Gaussian rows w; 2 * H * T * m * (2 Dh + 1) MACs.
                            Both are a KernelizedAttention with their own feature map.
    grouped_from(ffn, G)    fc1 / fc2 as G block-diagonal groups (G times fewer weights and MACs):
                            hidden neurons are assigned to the input group that holds most of
                            their fc1 weight energy (balanced), and fc2 keeps the matching block.

Every attention swap keeps the projections (q_proj, k_proj, v_proj, out_proj, n_heads,
head_dim), so heads can still be pruned, and the layers quantized or factorized, after it.
Shapes: x (B, T, D), pad_mask (B, T) bool, True on padding. A padded batch gives the same
outputs on real frames as each item alone (padded keys never contribute; no NaN anywhere).
Every forward is plain tensor arithmetic with a symbolic T, so torch.onnx.export(dynamo=True)
exports it with a dynamic time axis.
"""
from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import nn

from workbench.models.layers import MultiHeadSelfAttention

#: Added to masked scores: finite, so a block with no real key gives a uniform softmax (on
#: padding, ignored) instead of NaN, which would leak into real frames through 0 * NaN.
_MASKED = -1e9


class _SwappedAttention(MultiHeadSelfAttention):
    """Shared projections; subclasses replace the scores-and-mix step `mix(q, k, v, valid)`."""

    def __init__(self, source: MultiHeadSelfAttention) -> None:
        nn.Module.__init__(self)
        self.n_heads, self.head_dim = source.n_heads, source.head_dim
        for name in ("q_proj", "k_proj", "v_proj", "out_proj"):
            # copies of the modules themselves: a projection that is already low rank or
            # quantized (a compressed or recovered checkpoint swapped afterwards) keeps its form
            setattr(self, name, copy.deepcopy(getattr(source, name)))

    def forward(self, x: torch.Tensor, pad_mask: torch.Tensor | None = None) -> torch.Tensor:
        b, t, _ = x.shape
        # (B, T, H*Dh) -> (B, H, T, Dh)
        q = self.q_proj(x).view(b, t, self.n_heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(b, t, self.n_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(b, t, self.n_heads, self.head_dim).transpose(1, 2)
        valid = (torch.ones(b, t, dtype=torch.bool, device=x.device) if pad_mask is None
                 else ~pad_mask)
        y = self.mix(q, k, v, valid)                              # (B, H, T, Dh)
        return self.out_proj(y.transpose(1, 2).reshape(b, t, self.n_heads * self.head_dim))

    def mix(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, valid: torch.Tensor
            ) -> torch.Tensor:
        raise NotImplementedError


class WindowedSelfAttention(_SwappedAttention):
    """Blocked local softmax attention (module docstring); `window` in frames of the block input."""

    def __init__(self, source: MultiHeadSelfAttention, window: int) -> None:
        super().__init__(source)
        if window < 1:
            raise ValueError(f"window: at least 1 frame, got {window}")
        self.window = int(window)

    def mix(self, q, k, v, valid):
        b, h, t, dh = q.shape
        w = self.window
        n = (t + w - 1) // w                     # blocks
        extra = n * w - t
        # queries: (B, H, n, W, Dh); keys / values padded by one block each side, then the
        # three blocks around each query block side by side: (B, H, n, 3W, Dh)
        qb = F.pad(q, (0, 0, 0, extra)).reshape(b, h, n, w, dh)
        kp = F.pad(k, (0, 0, w, extra + w)).reshape(b, h, n + 2, w, dh)
        vp = F.pad(v, (0, 0, w, extra + w)).reshape(b, h, n + 2, w, dh)
        kb = torch.cat([kp[:, :, :-2], kp[:, :, 1:-1], kp[:, :, 2:]], dim=3)
        vb = torch.cat([vp[:, :, :-2], vp[:, :, 1:-1], vp[:, :, 2:]], dim=3)
        vm = F.pad(valid, (w, extra + w)).reshape(b, 1, n + 2, 1, w)
        mask = torch.cat([vm[:, :, :-2], vm[:, :, 1:-1], vm[:, :, 2:]], dim=4)  # (B,1,n,1,3W)
        scores = torch.matmul(qb, kb.transpose(-1, -2)) * (dh ** -0.5)       # (B,H,n,W,3W)
        scores = scores.masked_fill(~mask, _MASKED)
        y = torch.matmul(scores.softmax(-1), vb)                           # (B,H,n,W,Dh)
        return y.reshape(b, h, n * w, dh)[:, :, :t]


class KernelizedAttention(_SwappedAttention):
    """softmax(q k^T) v replaced by phi(q) (phi(k)^T v) / (phi(q) . sum_t phi(k_t)): linear in T,
    no (T, T) matrix. The one base of linear and Performer attention; a subclass gives its
    feature map phi (`feature_map`). Per head with m features of dimension Dh: phi(k)^T v and
    phi(q) (.) are T * m * Dh MACs each, the normaliser 2 * T * m (`kernelized_attention_row`
    in compress/techniques/_swap.py prices it, plus the feature map's own MACs)."""

    eps: float = 1e-6

    def feature_map(self, q: torch.Tensor, k: torch.Tensor, valid: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        """(phi(q), phi(k)), each (B, H, T, m), with the padded keys' features zero."""
        raise NotImplementedError

    def mix(self, q, k, v, valid):
        fq, fk = self.feature_map(q, k, valid)
        kv = torch.matmul(fk.transpose(-1, -2), v)              # (B, H, m, Dh)
        z = fk.sum(dim=2, keepdim=True)                         # (B, H, 1, m)
        num = torch.matmul(fq, kv)                              # (B, H, T, Dh)
        den = (fq * z).sum(-1, keepdim=True)                    # (B, H, T, 1)
        return num / (den + self.eps)


class LinearSelfAttention(KernelizedAttention):
    """Kernelized attention with phi = elu + 1 (module docstring): m = Dh features."""

    def feature_map(self, q, k, valid):
        m = valid[:, None, :, None].to(q.dtype)                 # (B, 1, T, 1)
        return F.elu(q) + 1.0, (F.elu(k) + 1.0) * m             # padded keys contribute 0


def orthogonal_features(m: int, d: int, seed: int) -> torch.Tensor:
    """(m, d) rows: blocks of orthogonal Gaussian directions, each row rescaled to the norm of
    a d-dimensional Gaussian sample (FAVOR+'s orthogonal random features, arXiv:2009.14794)."""
    gen = torch.Generator().manual_seed(seed)
    blocks = []
    for _ in range(math.ceil(m / d)):
        qm, _ = torch.linalg.qr(torch.randn(d, d, generator=gen, dtype=torch.float64))
        blocks.append(qm.T)
    w = torch.cat(blocks)[:m]
    norms = torch.randn(m, d, generator=gen, dtype=torch.float64).norm(dim=1, keepdim=True)
    return (w * norms).float()


class PerformerSelfAttention(KernelizedAttention):
    """FAVOR+ random-feature attention (module docstring); `features` random features per head."""

    def __init__(self, source: MultiHeadSelfAttention, features: int, seed: int = 0) -> None:
        super().__init__(source)
        # persistent: a checkpoint carries the features, so a reload computes the same function
        self.register_buffer("projection", orthogonal_features(features, self.head_dim, seed))

    def feature_map(self, q, k, valid):
        scale = self.head_dim ** -0.25
        q, k = q * scale, k * scale
        m = valid[:, None, :, None]                                        # (B, 1, T, 1)
        # Stabilizers cancel between numerator and denominator: per query its own max; for the
        # keys one max per (item, head) over real frames only, so padding cannot change it.
        q_proj = torch.matmul(q, self.projection.T)                         # (B, H, T, m)
        k_proj = torch.matmul(k, self.projection.T)
        q_c = q_proj.amax(-1, keepdim=True).detach()
        k_c = k_proj.masked_fill(~m, _MASKED).amax(dim=(-1, -2), keepdim=True).detach()
        fq = torch.exp(q_proj - 0.5 * (q * q).sum(-1, keepdim=True) - q_c)
        fk = torch.exp(k_proj - 0.5 * (k * k).sum(-1, keepdim=True) - k_c) * m.to(q.dtype)
        return fq, fk


class GroupedLinear(nn.Module):
    """A block-diagonal Linear: the input split into G equal groups, group g through its own
    Linear `parts[g]` (in/G -> out/G), the outputs concatenated group-major.

    The parts are ordinary nn.Linear layers, so the profiler, quantization and the ONNX export
    see G small MatMuls (exactly the work done). `in_features` / `out_features`: full widths.
    """

    def __init__(self, parts: list[nn.Linear]) -> None:
        super().__init__()
        self.parts = nn.ModuleList(parts)
        self.in_features = sum(p.in_features for p in parts)
        self.out_features = sum(p.out_features for p in parts)

    @property
    def groups(self) -> int:
        return len(self.parts)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # (..., in) -> G x (..., in/G) -> G x (..., out/G) -> (..., out)
        xs = x.split([p.in_features for p in self.parts], dim=-1)
        return torch.cat([p(xi) for p, xi in zip(self.parts, xs)], dim=-1)


def assign_neurons(fc1_weight: torch.Tensor, groups: int) -> torch.Tensor:
    """(F, D) fc1 weight -> (G, F/G) neuron indices per input group, balanced: neurons in order
    of how concentrated their energy is take the group holding most of it that still has room.
    """
    f, d = fc1_weight.shape
    energy = fc1_weight.detach().double().pow(2).reshape(f, groups, d // groups).sum(-1)  # (F, G)
    share = energy / energy.sum(1, keepdim=True).clamp_min(1e-30)
    cap = f // groups
    room = [cap] * groups
    out: list[list[int]] = [[] for _ in range(groups)]
    for neuron in share.max(1).values.argsort(descending=True).tolist():
        for g in share[neuron].argsort(descending=True).tolist():
            if room[g]:
                out[g].append(neuron)
                room[g] -= 1
                break
    return torch.tensor([sorted(o) for o in out])


def grouped_from(ffn: nn.Module, groups: int) -> nn.Module:
    """A copy of the dense FFN `ffn` whose fc1 / fc2 are G-group GroupedLinears (module
    docstring): the block-diagonal part of the weights after assigning hidden neurons to input
    groups. Everything else is the FFN's own (its forward, activation, dropout): FeedForward
    works unchanged with any fc1 / fc2 modules."""
    fc1, fc2 = ffn.fc1, ffn.fc2
    d, f = fc1.in_features, fc1.out_features
    if fc2.out_features != d:
        raise ValueError("grouped FFN: fc2 must map back to fc1's input width")
    if d % groups or f % groups:
        raise ValueError(f"grouped FFN: groups={groups} must divide the model width ({d}) and "
                         f"the hidden width ({f})")
    neurons = assign_neurons(fc1.weight, groups)                      # (G, F/G)
    di, fg = d // groups, f // groups
    parts1, parts2 = [], []
    with torch.no_grad():
        for g in range(groups):
            cols = slice(g * di, (g + 1) * di)
            a = nn.Linear(di, fg, bias=fc1.bias is not None)
            a.weight.copy_(fc1.weight[neurons[g]][:, cols])
            if a.bias is not None:
                a.bias.copy_(fc1.bias[neurons[g]])
            c = nn.Linear(fg, di, bias=fc2.bias is not None)
            c.weight.copy_(fc2.weight[cols][:, neurons[g]])
            if c.bias is not None:
                c.bias.copy_(fc2.bias[cols])
            parts1.append(a)
            parts2.append(c)
    # deepcopy with fc1 / fc2 mapped to themselves: their weights are not copied, only replaced
    out = copy.deepcopy(ffn, memo={id(fc1): fc1, id(fc2): fc2})
    out.fc1, out.fc2 = GroupedLinear(parts1), GroupedLinear(parts2)
    return out
