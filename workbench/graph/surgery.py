"""Physical removal of graph-found units (groups.py) from a copy of the model.

    prune(model, structure, amounts, example=None) -> Pruned(model, removed, params before/after)

`amounts` maps a group path or a kind ("heads", "neurons", "channels") to a fraction; how many
go is `count_to_remove` (round-half-up, at least one unit kept), which go are the lowest scores
(`scores`: magnitude = sum of squares of every slice the unit owns, or taylor = sum of
|w * dL/dw| over them given gradients; ties: the lower index goes first).

Surgery: every (parameter, dim) axis of a group keeps the indices of its kept units, in order;
tied parameters (one tensor under two names) stay tied. Then the modules that hold sizes as
attributes are told: Linear in/out_features, Conv in/out_channels and groups (depthwise),
BatchNorm num_features, GroupNorm channels (one channel per group), an attention's `num_heads`
/ `n_heads` attribute, and nn.MultiheadAttention - whose forward derives the head size from the
query width and so cannot run with fewer heads - is replaced by `PrunedSelfAttention`, the same
computation with its own head count. With `example`, the result is checked against the original
with the removed units' consumer columns zeroed (must agree to 1e-4 relative).
"""
from __future__ import annotations

import copy
import math
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils._pytree import tree_flatten

from workbench.errors import PlanError
from workbench.graph.structure import Group, Structure

#: Relative tolerance of the pruned-vs-masked check (float reassociation is ~1e-6).
CHECK_RTOL = 1e-4


class PrunedSelfAttention(nn.Module):
    """nn.MultiheadAttention (self-attention, packed in-projection) with `num_heads` heads of
    `head_dim` each, where num_heads * head_dim may differ from the model width.

    Same call signature and maths as nn.MultiheadAttention for query is key is value:
    x -> in_proj (3 * H * dh) -> per head softmax(q k^T / sqrt(dh) + mask) v -> out_proj.
    Returns (output, None): attention weights are not computed (callers pass need_weights=False).
    """

    def __init__(self, mha: nn.MultiheadAttention, num_heads: int) -> None:
        super().__init__()
        self.in_proj_weight = mha.in_proj_weight
        self.in_proj_bias = mha.in_proj_bias
        self.out_proj = mha.out_proj
        self.num_heads = num_heads
        self.head_dim = mha.head_dim
        self.batch_first = mha.batch_first
        self.dropout = mha.dropout

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                key_padding_mask: torch.Tensor | None = None, need_weights: bool = True,
                attn_mask: torch.Tensor | None = None, average_attn_weights: bool = True,
                is_causal: bool = False) -> tuple[torch.Tensor, None]:
        x = query if self.batch_first else query.transpose(0, 1)        # (B, T, D)
        b, t, _ = x.shape
        qkv = F.linear(x, self.in_proj_weight, self.in_proj_bias)       # (B, T, 3 H dh)
        q, k, v = qkv.view(b, t, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        mask = None
        if key_padding_mask is not None:                                # (B, S) True = pad
            mask = torch.zeros(b, 1, 1, t, dtype=x.dtype, device=x.device).masked_fill(
                key_padding_mask.view(b, 1, 1, t).bool(), float("-inf"))
        if attn_mask is not None:
            extra = (torch.zeros_like(attn_mask, dtype=x.dtype).masked_fill(
                attn_mask, float("-inf")) if attn_mask.dtype == torch.bool else attn_mask)
            mask = extra if mask is None else mask + extra
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0,
            is_causal=is_causal and mask is None)                       # (B, H, T, dh)
        out = out.transpose(1, 2).reshape(b, t, self.num_heads * self.head_dim)
        out = self.out_proj(out)
        return (out if self.batch_first else out.transpose(0, 1)), None


@dataclass(frozen=True)
class Pruned:
    """A pruned copy, what was removed per group (unit indices), and parameter counts."""

    model: nn.Module
    removed: dict[str, tuple[int, ...]]
    params_before: int
    params_after: int


def count_to_remove(n: int, amount: float, keep_one: bool = True) -> int:
    """How many of `n` units a prune amount removes: round-half-up(amount * n), at most n - 1
    when `keep_one` (structured) so the layer keeps a path for the signal. The one rule of the
    package: workbench.compress.prune imports it from here (graph sits below compress)."""
    count = math.floor(amount * n + 0.5)
    return min(count, n - 1) if keep_one else min(count, n)


def count_params(model: nn.Module) -> int:
    """Parameters of `model`, each tensor once (tied weights count once)."""
    return sum(p.numel() for p in model.parameters())


def _amount_for(group: Group, amounts: Mapping[str, float]) -> float:
    return float(amounts.get(group.path, amounts.get(group.kind, 0.0)))


def _unit_index(group: Group, axis: tuple[str, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """(slice indices, owning unit of each) along one axis of `group`."""
    idx = [i for unit in group.units for i in unit[axis]]
    owner = [u for u, unit in enumerate(group.units) for _ in unit[axis]]
    return torch.tensor(idx, dtype=torch.long), torch.tensor(owner, dtype=torch.long)


def scores(model: nn.Module, group: Group, method: str = "magnitude",
           grads: Mapping[str, torch.Tensor] | None = None) -> torch.Tensor:
    """Importance of each unit of `group` (float64, (units,)).

    magnitude  sum of squares of every slice the unit owns (the L2 norm squared: the same order
               as workbench.compress.importance's norm)
    taylor     sum over those slices of |w * dL/dw| (Molchanov et al. 2019, "Importance
               Estimation for Neural Network Pruning", CVPR), `grads` by parameter name as
               `workbench.compress.calibration.taylor_gradients` gives them
    """
    if method not in ("magnitude", "taylor"):
        raise PlanError(f"prune.importance: unknown method {method!r} (magnitude | taylor).")
    tensors = [_get(model, name).detach() for name, _ in group.axes]
    out = torch.zeros(group.size, dtype=torch.float64)
    for axis, tensor in zip(group.axes, tensors, strict=True):
        value = tensor.double()
        if method == "taylor":
            grad = None if grads is None else grads.get(axis[0])
            if grad is None:
                raise PlanError(f"prune.importance 'taylor' on {group.path!r}: no gradient for "
                                f"{axis[0]}; compress with a calibration set that has targets "
                                f"(calib=...).")
            value = (value * grad.detach().double()).abs()
        else:
            value = value ** 2
        per_index = value.movedim(axis[1], 0).reshape(tensor.shape[axis[1]], -1).sum(dim=1)
        idx, owner = _unit_index(group, axis)
        out.index_add_(0, owner, per_index[idx])
    return out


def choose(model: nn.Module, group: Group, amount: float, method: str = "magnitude",
           grads: Mapping[str, torch.Tensor] | None = None) -> list[int]:
    """Units of `group` to remove at `amount` (lowest score first, lower index on ties)."""
    n = count_to_remove(group.size, amount)
    if n == 0:
        return []
    return sorted(torch.argsort(scores(model, group, method, grads), stable=True)[:n].tolist())


def _get(model: nn.Module, name: str) -> torch.Tensor:
    path, _, attr = name.rpartition(".")
    return getattr(model.get_submodule(path) if path else model, attr)


def _aliases(model: nn.Module) -> dict[str, list[str]]:
    by_id: dict[int, list[str]] = {}
    for n, t in [*model.named_parameters(remove_duplicate=False),
                 *model.named_buffers(remove_duplicate=False)]:
        by_id.setdefault(id(t), []).append(n)
    return {n: names for names in by_id.values() for n in names}


def remove_units_(model: nn.Module, groups_removed: list[tuple[Group, list[int]]],
                  grads: MutableMapping[str, torch.Tensor] | None = None) -> None:
    """Slice every axis of each group to its kept units, in place (on a copy you own); the
    gradients in `grads` (by parameter name) are sliced the same way, so later steps that read
    them (unstructured Taylor masks) see the new shapes."""
    keep_by_name: dict[str, list[tuple[int, torch.Tensor]]] = {}
    for group, removed in groups_removed:
        gone = set(removed)
        for axis in group.axes:
            idx = sorted(i for u, unit in enumerate(group.units) if u not in gone
                         for i in unit[axis])
            keep_by_name.setdefault(axis[0], []).append((axis[1], torch.tensor(idx)))
    aliases = _aliases(model)
    done: set[str] = set()
    old_shapes: dict[str, torch.Size] = {}
    for name, cuts in keep_by_name.items():
        if name in done:
            continue
        tensor = _get(model, name)
        old_shapes[name] = tensor.shape
        new = tensor.detach()
        for dim, index in cuts:
            new = new.index_select(dim, index)
        new = new.clone()
        if grads is not None and name in grads:
            grad = grads[name]
            for dim, index in cuts:
                grad = grad.index_select(dim, index)
            grads[name] = grad
        if isinstance(tensor, nn.Parameter):
            new = nn.Parameter(new, requires_grad=tensor.requires_grad)
        for alias in aliases.get(name, [name]):
            path, _, attr = alias.rpartition(".")
            owner = model.get_submodule(path) if path else model
            if isinstance(new, nn.Parameter) or attr in owner._parameters:
                owner._parameters[attr] = new
            else:
                owner._buffers[attr] = new
            done.add(alias)
    for name in done:
        _fix_sizes(model, name.rpartition(".")[0], old_shapes.get(name))
    for group, removed in groups_removed:
        if group.kind == "heads" and removed:
            _fix_heads(model, group, group.size - len(removed))


def _fix_sizes(model: nn.Module, path: str, old: torch.Size | None) -> None:
    m = model.get_submodule(path) if path else model
    w = getattr(m, "weight", None)
    if isinstance(m, nn.Linear):
        m.out_features, m.in_features = m.weight.shape
    elif isinstance(m, nn.modules.conv._ConvNd) and w is not None:
        depthwise = m.groups > 1 and m.groups == m.in_channels == m.out_channels
        m.out_channels = w.shape[0]
        if depthwise:
            m.groups = m.in_channels = w.shape[0]
        else:
            m.in_channels = w.shape[1] * m.groups
    elif isinstance(m, nn.modules.batchnorm._NormBase):
        ref = m.weight if m.weight is not None else m.running_mean
        m.num_features = ref.shape[0]
    elif isinstance(m, nn.GroupNorm):
        per_channel = m.num_groups == m.num_channels
        m.num_channels = m.weight.shape[0]
        if per_channel:
            m.num_groups = m.num_channels


def _fix_heads(model: nn.Module, group: Group, kept: int) -> None:
    module = model.get_submodule(group.path) if group.path else model
    if isinstance(module, nn.MultiheadAttention):
        parent, _, attr = group.path.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, attr,
                PrunedSelfAttention(module, kept))
        return
    for attr in ("num_heads", "n_heads", "num_attention_heads", "n_head"):
        if isinstance(getattr(module, attr, None), int):
            setattr(module, attr, kept)


def _outputs(model: nn.Module, example: tuple) -> list[torch.Tensor]:
    with torch.no_grad():
        out = model(*example)
    return [o for o in tree_flatten(out)[0] if isinstance(o, torch.Tensor) and o.is_floating_point()]


def _masked(model: nn.Module, groups_removed: list[tuple[Group, list[int]]]) -> nn.Module:
    """A copy with the removed units' consumer columns (input dim of the next weight) zeroed."""
    ref = copy.deepcopy(model)
    with torch.no_grad():
        for group, removed in groups_removed:
            for name, dim in group.consumers():
                t = _get(ref, name)
                for u in removed:
                    t.index_fill_(dim, torch.tensor(group.units[u][(name, dim)]), 0.0)
    return ref


def difference(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    """max |a - b| / max(1, max |a|) over paired outputs (inf when shapes differ)."""
    if len(a) != len(b) or any(x.shape != y.shape for x, y in zip(a, b, strict=True)):
        return math.inf
    worst = 0.0
    for x, y in zip(a, b, strict=True):
        finite = torch.isfinite(x)
        if not torch.equal(finite, torch.isfinite(y)):
            return math.inf
        scale = max(1.0, float(x[finite].abs().max()) if bool(finite.any()) else 1.0)
        worst = max(worst, float((x[finite] - y[finite]).abs().max()) / scale
                    if bool(finite.any()) else 0.0)
    return worst


def check_groups(model: nn.Module, example: tuple, groups: list[Group]) -> str | None:
    """None if removing the weakest unit of each of `groups` physically equals zeroing its
    consumer columns on `example`; otherwise the reason (error or difference) in words."""
    removals = [(g, [int(torch.argmin(scores(model, g)))]) for g in groups]
    pruned = copy.deepcopy(model)
    try:
        remove_units_(pruned, removals)
        got = _outputs(pruned, example)
    except Exception as err:  # noqa: BLE001 - the reason is reported, the group refused
        return f"removing one unit breaks the forward pass ({type(err).__name__}: {err})"
    diff = difference(_outputs(_masked(model, removals), example), got)
    if diff > CHECK_RTOL:
        return (f"removing one unit does not equal zeroing it (relative difference {diff:.2e} "
                f"> {CHECK_RTOL})")
    return None


def plan_removals(model: nn.Module, structure: Structure, amounts: Mapping[str, float],
                  importance: str = "magnitude",
                  grads: Mapping[str, torch.Tensor] | None = None
                  ) -> list[tuple[Group, list[int]]]:
    """(group, removed unit indices) for every group `amounts` names with a positive amount."""
    known = {g.path for g in structure.groups} | {"heads", "neurons", "channels"}
    for key, value in amounts.items():
        if key not in known:
            refused = [r.reason for r in structure.refusals if r.path == key]
            raise PlanError(f"amounts[{key!r}]: not a prunable group or kind"
                            + (f"; it was refused: {refused[0]}" if refused else
                               f"; groups: {sorted(known)}") + ".")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
            raise PlanError(f"amounts[{key!r}]: a fraction in [0, 1), got {value!r}.")
    out = []
    for group in structure.groups:
        amount = _amount_for(group, amounts)
        if amount > 0:
            removed = choose(model, group, amount, importance, grads)
            if removed:
                out.append((group, removed))
    return out


def prune(model: nn.Module, structure: Structure, amounts: Mapping[str, float],
          example: tuple | None = None, importance: str = "magnitude",
          grads: Mapping[str, torch.Tensor] | None = None) -> Pruned:
    """A pruned deep copy of `model` (the input is never changed); see module doc.
    `importance` "taylor" needs `grads` (parameter name -> dL/dw, e.g. taylor_gradients)."""
    removals = plan_removals(model, structure, amounts, importance, grads)
    new = copy.deepcopy(model)
    remove_units_(new, removals)
    if example is not None and removals:
        diff = difference(_outputs(_masked(model, removals), example), _outputs(new, example))
        if diff > CHECK_RTOL:
            raise PlanError(f"pruned model differs from the masked original by {diff:.2e} "
                            f"(> {CHECK_RTOL}); groups: {[g.path for g, _ in removals]}.")
    return Pruned(new, {g.path: tuple(r) for g, r in removals}, count_params(model),
                  count_params(new))
