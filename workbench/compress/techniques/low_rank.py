"""Low rank as a registered technique: a Linear becomes two (truncated SVD), when that is smaller.
The factorization is workbench.compress.lowrank."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn

from workbench.compress.lowrank import LowRankLinear, choose_rank, factorize
from workbench.compress.techniques.registry import ApplyContext, Technique, register


def replace_module(root: nn.Module, path: str, new: nn.Module) -> nn.Module:
    """Put `new` at `path` under `root`; returns the (possibly new) root."""
    if not path:
        return new
    parent_path, _, name = path.rpartition(".")
    setattr(root.get_submodule(parent_path) if parent_path else root, name, new)
    return root


def check_module(setting: dict[str, Any], linear: nn.Module) -> str | None:
    rank = setting["rank"]
    if rank is None:
        return None
    limit = min(linear.in_features, linear.out_features)
    if rank > limit:
        return (f"{rank} is above min(in, out) = {limit} of this "
                f"{linear.in_features}->{linear.out_features} Linear.")
    return None


def apply_(root: nn.Module, entries: Mapping[str, dict[str, Any]], ctx: ApplyContext
           ) -> nn.Module:
    for path, s in entries.items():
        linear = root.get_submodule(path)
        rank, dense_reason = choose_rank(linear.weight, s["rank"], s["energy"])
        if dense_reason is not None:
            ctx.notes.append(f"{path}: {dense_reason}")
            continue
        root = replace_module(root, path, factorize(linear, rank))
        ctx.notes.append(f"{path}: low rank {rank} ({linear.in_features}->{rank}->"
                         f"{linear.out_features})")
    return root


def describe(setting: dict[str, Any]) -> str:
    if setting["rank"] is not None:
        return f"low rank {setting['rank']} (truncated SVD)"
    return f"low rank keeping {setting['energy']:.0%} of the energy (truncated SVD)"


LOW_RANK = register(Technique(
    name="low_rank", fields=("rank", "energy"), order=30,
    weight_parts=lambda m: {"down": m.down, "up": m.up} if isinstance(m, LowRankLinear) else None,
    applies_to=lambda s, kind: kind == "linear", fits="rank/energy fit Linear layers",
    apply_=apply_, changes_shape=lambda s: True, export="pytorch",
    why_not=lambda s, target, path: (f"low rank applies to Linear layers, and {path} is a "
                                     f"{target.type_name}."),
    field_name=lambda cfg: "rank" if cfg.rank is not None else "energy",
    check_module=check_module, describe=describe))  # no Control: the compress tab draws the rank slider
