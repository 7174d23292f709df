"""What progressive pruning (workbench.compress.progressive) masks while it trains, and how it
turns the masks into the one-shot result at the end.

    GatedUnits     heads / FFN neurons / conv channels of one module: a gate per unit
    MaskedWeights  one Linear / Conv weight: a 0/1 mask per weight (unstructured)

Masking a structured unit is exactly removing it: the gate multiplies the input of the layer
that reads the units (out_proj / fc2 / pointwise2), so a gated unit's q/k/v rows, fc1 row or
pointwise1 rows and depthwise channel only feed a zero. The one exception is a conv module's
LayerNorm over channels, whose mean and variance mix channels: while channels are masked it is
computed over the live channels only (`_LiveLayerNorm`), which is what the norm of the cut
module computes. A BatchNorm normalizes each channel on its own and needs nothing. `cut()`
then removes the masked units with the one-shot surgery (workbench.compress.prune.remove_*_).

An unstructured mask is a parametrization (torch.nn.utils.parametrize): the layer computes
with weight = latent * mask, so a masked weight is zero in every forward pass and gets a zero
gradient, whatever the optimizer does to its latent value. `finish()` leaves the masked
product as the weight and the mask as the `weight_mask` buffer, as
workbench.compress.prune.prune_unstructured_ does. Masks only grow (Zhu & Gupta 2017).

Importance of what is still alive (recomputed at each pruning event):
    magnitude   heads / neurons / channels: L2 norm of the unit's weights
                (workbench.compress.importance); a weight: |w|
    taylor      a unit: sum over the steps since the last event of (dL/dgate)^2 (Molchanov et
                al. 2019, arXiv:1906.10771, their gate formulation); a weight: sum of
                (w * dL/dw)^2, the same estimate with the weight as its own gate
    activation  a unit: mean |unit output| on the training batches x norm of its out_proj /
                fc2 / pointwise2 columns (how much it writes into the residual stream);
                a weight: |w| x RMS of its input feature on the training batches (Wanda, Sun et
                al. 2023, arXiv:2306.11695, their score |W_ij| * ||X_j||_2 up to a constant)
Statistics are collected for the method in use only, in training forward passes (grad
enabled), and reset after each event, so every event scores the weights as trained since the
one before.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

from workbench.compress import importance as imp
from workbench.compress.prune import (count_to_remove, mask_weights_, remove_channels_,
                                      remove_heads_, remove_neurons_)
from workbench.errors import PlanError

#: The layer that reads each kind of unit (its input is gated).
_CONSUMER = {"heads": "out_proj", "neurons": "fc2", "channels": "pointwise2"}
_REMOVE = {"heads": remove_heads_, "neurons": remove_neurons_, "channels": remove_channels_}
_MAGNITUDE = {"heads": imp.head_importance, "neurons": imp.neuron_importance,
              "channels": imp.channel_importance}


def unit_count(module: nn.Module, kind: str) -> int:
    """How many heads / neurons / channels `module` has."""
    if kind == "heads":
        return module.n_heads
    return module.fc1.out_features if kind == "neurons" else module.depthwise.in_channels


class _LiveLayerNorm(nn.Module):
    """A conv module's LayerNorm over channels (B, T, C) computed on the live channels only,
    zero on the masked ones: what the norm of the cut module computes."""

    def __init__(self, inner: nn.LayerNorm, alive: torch.Tensor) -> None:
        super().__init__()
        self.inner, self.alive = inner, alive     # `alive`: GatedUnits' vector, updated in place

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if bool(self.alive.all()):
            return self.inner(x)
        idx = torch.nonzero(self.alive).flatten()
        w, b = self.inner.weight, self.inner.bias
        y = F.layer_norm(x.index_select(-1, idx), (len(idx),),
                         None if w is None else w[idx], None if b is None else b[idx],
                         self.inner.eps)
        return x.new_zeros(x.shape).index_copy(x.dim() - 1, idx, y)


class GatedUnits:
    """The heads / neurons / channels of one module, masked by gates; `final` of them go,
    chosen by importance `method` (module docstring)."""

    def __init__(self, path: str, module: nn.Module, kind: str, final: int,
                 method: str = "magnitude") -> None:
        self.path, self.module, self.kind, self.final = path, module, kind, final
        self.method = method
        self.n = unit_count(module, kind)
        self.width = module.head_dim if kind == "heads" else 1      # inputs per unit
        norm = getattr(module, "norm", None) if kind == "channels" else None
        live_norm = isinstance(norm, nn.LayerNorm) and tuple(norm.normalized_shape) == (self.n,)
        per_channel = isinstance(norm, nn.modules.batchnorm._BatchNorm)
        if norm is not None and not (live_norm or per_channel):
            raise PlanError(f"layers[{path!r}]: progressive channel pruning handles a LayerNorm "
                            f"over the channels or a BatchNorm in the conv module, not a "
                            f"{type(norm).__name__}; prune its channels one-shot.")
        self.consumer = getattr(module, _CONSUMER[kind])
        self.gate = torch.ones(self.n, requires_grad=True)
        self.alive = torch.ones(self.n, dtype=torch.bool)
        self.taylor = torch.zeros(self.n)
        self.act = torch.zeros(self.n)
        self.act_count = 0
        self.handle = self.consumer.register_forward_pre_hook(self._pre)
        if live_norm:
            module.norm = _LiveLayerNorm(norm, self.alive)

    def _pre(self, _module: nn.Module, args: tuple) -> tuple:
        x = args[0]                     # Linear (B, T, n * width); Conv (B, n, T)
        conv = self.kind == "channels"
        if self.method == "activation" and torch.is_grad_enabled():
            with torch.no_grad():
                units = (x.movedim(1, -1) if conv else x).detach().abs()
                self.act += units.reshape(-1, self.n, self.width).mean(dim=(0, 2))
                self.act_count += 1
        gate = self.gate.repeat_interleave(self.width) if self.width > 1 else self.gate
        if conv:
            gate = gate.view(1, -1, *([1] * (x.dim() - 2)))
        return (x * gate,) + tuple(args[1:])

    def weight_units(self) -> list[tuple[nn.Module, int, torch.Tensor]]:
        """(layer, dim, unit of each index along dim) for every Linear / Conv weight whose
        slices go with the units (what unstructured masks in the same layer must respect)."""
        m, n = self.module, self.n
        along = torch.arange(n * self.width) // self.width
        if self.kind == "heads":
            return [*((getattr(m, p), 0, along) for p in ("q_proj", "k_proj", "v_proj")),
                    (m.out_proj, 1, along)]
        if self.kind == "neurons":
            return [(m.fc1, 0, along), (m.fc2, 1, along)]
        return [(m.pointwise1, 0, torch.arange(m.pointwise1.out_channels) % n),
                (m.depthwise, 0, along), (m.pointwise2, 1, along)]

    def accumulate(self) -> None:
        """After a backward pass: add (dL/dgate)^2 to the Taylor scores."""
        if self.gate.grad is not None:
            if self.method == "taylor":
                self.taylor += self.gate.grad.detach().pow(2)
            self.gate.grad = None

    def scores(self) -> torch.Tensor:
        if self.method == "magnitude":
            return _MAGNITUDE[self.kind](self.module)
        if self.method == "taylor":
            return self.taylor.clone()
        cols = self.consumer.weight.detach().transpose(0, 1).reshape(self.n, -1).pow(2).sum(1)
        return self.act / max(self.act_count, 1) * cols.sqrt()

    def prune_to(self, count: int) -> list[int]:
        """Mask the lowest-scored live units until `count` are masked; returns the new ones."""
        todo = count - int((~self.alive).sum())
        if todo <= 0:
            return []
        s = self.scores().double()
        s[~self.alive] = math.inf
        drop = torch.argsort(s, stable=True)[:todo].tolist()
        with torch.no_grad():
            for i in drop:
                self.alive[i] = False
                self.gate[i] = 0.0
        self.taylor.zero_()
        self.act.zero_()
        self.act_count = 0
        return drop

    def cut(self) -> None:
        """Remove the masked units for real (shapes shrink; the function does not change)."""
        self.handle.remove()
        if isinstance(getattr(self.module, "norm", None), _LiveLayerNorm):
            self.module.norm = self.module.norm.inner
        _REMOVE[self.kind](self.module, torch.nonzero(self.alive).flatten())


class _Mask(nn.Module):
    """The parametrization weight -> weight * mask (mask: float 0/1, the weight's shape)."""

    def __init__(self, mask: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("mask", mask)

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight * self.mask


class MaskedWeights:
    """Unstructured pruning of one Linear / Conv weight by a growing mask.

    `final`: weights masked at the end, count_to_remove(numel, amount) of the weight as the
    one-shot path leaves it, i.e. after the structured units (`slicers`) it shares are cut;
    only weights of units still alive are masked or counted."""

    def __init__(self, path: str, layer: nn.Module, amount: float,
                 slicers: list[tuple[GatedUnits, int, torch.Tensor]],
                 method: str = "magnitude") -> None:
        self.path, self.layer, self.slicers, self.method = path, layer, slicers, method
        shape = list(layer.weight.shape)
        for g, dim, units in slicers:             # every unit owns the same number of slices
            shape[dim] = units.numel() // g.n * (g.n - g.final)
        self.final = count_to_remove(math.prod(shape), amount, keep_one=False)
        self.mask = torch.ones_like(layer.weight, requires_grad=False).detach()
        parametrize.register_parametrization(layer, "weight", _Mask(self.mask))
        self.latent = layer.parametrizations.weight.original
        self.taylor = torch.zeros_like(self.mask)
        self.sq = torch.zeros(layer.in_features if isinstance(layer, nn.Linear)
                              else layer.in_channels)
        self.rows = 0
        self.handle = (layer.register_forward_pre_hook(self._pre) if method == "activation"
                       else None)

    def _pre(self, layer: nn.Module, args: tuple) -> None:
        if torch.is_grad_enabled():
            with torch.no_grad():
                x = args[0].detach()             # Linear (..., in); Conv (B, in, *spatial)
                flat = x.reshape(-1, x.shape[-1]) if isinstance(layer, nn.Linear) \
                    else x.movedim(1, -1).reshape(-1, x.shape[1])
                self.sq += flat.pow(2).sum(0)
                self.rows += flat.shape[0]

    def accumulate(self) -> None:
        """After a backward pass: add (w * dL/dw)^2 to the Taylor scores."""
        g = self.latent.grad
        if g is not None and self.method == "taylor":
            self.taylor += (self.latent.detach() * g.detach()).pow(2)

    def live(self) -> torch.Tensor:
        """Bool, the weight's shape: weights of structured units still alive."""
        ok = torch.ones(self.mask.shape, dtype=torch.bool)
        for g, dim, units in self.slicers:
            view = [1] * ok.dim()
            view[dim] = -1
            ok &= g.alive[units].view(view)
        return ok

    def scores(self) -> torch.Tensor:
        w = self.latent.detach()
        if self.method == "magnitude":
            return w.abs()
        if self.method == "taylor":
            return self.taylor.clone()
        rms = (self.sq / max(self.rows, 1)).sqrt()            # (in_channels,)
        out, per = w.shape[0], w.shape[1]                     # grouped conv: per = in / groups
        group = torch.arange(out) // (out // (rms.numel() // per))
        index = group[:, None] * per + torch.arange(per)[None, :]          # (out, per)
        return w.abs() * rms[index].reshape(out, per, *([1] * (w.dim() - 2)))

    def prune_to(self, count: int) -> int:
        """Mask the lowest-scored live weights until `count` of the live ones are masked;
        returns how many it masked now."""
        live = self.live()
        masked = self.mask == 0
        todo = count - int((masked & live).sum())
        if todo <= 0:
            return 0
        s = self.scores().double().masked_fill(masked | ~live, math.inf)
        drop = torch.argsort(s.flatten(), stable=True)[:todo]
        self.mask.view(-1)[drop] = 0.0
        self.taylor.zero_()
        self.sq.zero_()
        self.rows = 0
        return todo

    def finish(self) -> int:
        """Back to a plain layer: weight = latent * mask, mask kept as `weight_mask` (as the
        one-shot path leaves it); returns the masked count."""
        if self.handle is not None:
            self.handle.remove()
        parametrize.remove_parametrizations(self.layer, "weight", leave_parametrized=True)
        return mask_weights_(self.layer, self.mask.bool())
