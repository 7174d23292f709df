"""Pruning as a registered technique: structured (heads / neurons / channels: shapes shrink) and
unstructured (masked weights). The surgery itself is workbench.compress.prune."""
from __future__ import annotations

from collections.abc import Mapping

from torch import nn

from workbench.compress.prune import (prune_channels_, prune_heads_, prune_neurons_,
                                      prune_unstructured_)
from workbench.compress.targets import graph_groups
from workbench.compress.techniques.registry import ApplyContext, Technique, register
from workbench.errors import PlanError
from workbench.graph.surgery import choose, remove_units_
from workbench.plan import STRUCTURE_FOR_KIND, PruneConfig

_STRUCTURED = {"heads": prune_heads_, "neurons": prune_neurons_, "channels": prune_channels_}


def applies_to(setting: PruneConfig, kind: str) -> bool:
    if kind in ("linear", "conv"):
        return setting.structure == "unstructured"
    return STRUCTURE_FOR_KIND.get(kind) == setting.structure


def why_not(setting: PruneConfig, target, path: str) -> str:
    want = STRUCTURE_FOR_KIND.get(target.kind, "unstructured")
    return (f"'{setting.structure}' pruning does not fit {path} ({target.type_name}, a "
            f"{target.kind} target); use structure '{want}' here, or name a module of the right "
            f"kind (heads: attention, neurons: FFN, channels: conv module, unstructured: "
            f"Linear/Conv).")


def _graph_removal(root: nn.Module, group, p: PruneConfig, grads):  # noqa: ANN001, ANN202
    """(group, unit indices to remove) for a graph group, by magnitude or Taylor importance
    (workbench.graph.surgery.scores; `grads` by parameter name relative to `root`)."""
    if p.structure == "unstructured":
        raise PlanError(f"layers[{group.path!r}]: a group found from the graph takes structured "
                        f"pruning ({group.kind}); got 'unstructured' (name one of its Linear / "
                        f"Conv layers for unstructured pruning).")
    return group, choose(root, group, p.amount, p.importance, grads)


def apply_(root: nn.Module, entries: Mapping[str, PruneConfig], ctx: ApplyContext) -> nn.Module:
    """Structured pruning first (importance on the original weights, later steps see the smaller
    shapes), then unstructured masks on what is left. Groups found from a recorded graph
    (workbench.byo: `graph_structure` on the model) are removed together at the end of the
    structured step."""
    groups = graph_groups(root)
    removals = []
    for path, p in entries.items():
        if path in groups:
            removals.append(_graph_removal(root, groups[path], p, ctx.grads))
            ctx.notes.append(f"{path}: removed {len(removals[-1][1])} {p.structure} "
                             f"{removals[-1][1]} (group found from the graph)")
        elif p.structure != "unstructured":
            removed = _STRUCTURED[p.structure](root.get_submodule(path), p.amount, p.importance,
                                               ctx.grads, prefix=path)
            ctx.notes.append(f"{path}: removed {len(removed)} {p.structure} {removed}")
    if removals:
        remove_units_(root, removals, ctx.grads)
        root._structure = None  # shapes changed: found again if asked
    for path, p in entries.items():
        if p.structure == "unstructured":
            grad = None if ctx.grads is None else ctx.grads.get(f"{path}.weight" if path
                                                                else "weight")
            zeros = prune_unstructured_(root.get_submodule(path), p.amount, p.importance, grad)
            ctx.notes.append(f"{path}: {zeros} weights masked to zero (unstructured)")
    return root


#: what each structure removes, for `describe` (the model card)
_UNITS = {"heads": "attention heads", "neurons": "FFN neurons", "channels": "conv channels"}


def describe(p: PruneConfig) -> str:
    if p.structure == "unstructured":
        return (f"unstructured pruning, {p.amount:.0%} of the weights zeroed ({p.importance} "
                f"importance; stored dense)")
    return (f"structured pruning, {p.amount:.0%} of the {_UNITS[p.structure]} removed "
            f"({p.importance} importance)")


def conflicts(p: PruneConfig, where: str, others) -> str | None:  # noqa: ANN001
    """Unstructured masks and low rank on one Linear: the factors are dense, the zeros lost."""
    if p.structure != "unstructured" or "low_rank" not in others:
        return None
    return (f"unstructured pruning ({where}) and low rank ({others['low_rank'][1]}) on the "
            f"same Linear would make the sparse weights dense again; pick one for this layer.")


PRUNING = register(Technique(
    name="prune", fields=("prune",), order=10, applies_to=applies_to,
    fits=("Pruning 'heads' fits attention modules, 'neurons' FFN modules, 'channels' conv "
          "modules, 'unstructured' Linear/Conv layers"),
    apply_=apply_, changes_shape=lambda p: p.structure != "unstructured", export="pytorch",
    is_noop=lambda p: p.amount == 0, why_not=why_not,
    field_name=lambda cfg: "prune.structure", describe=describe, conflicts=conflicts,
    # no Control: the compress tab draws pruning's own slider and structure dropdown
    needs=lambda p: frozenset({"gradients"}) if p.importance == "taylor" else frozenset()))
