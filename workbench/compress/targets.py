"""Which modules a compression plan may name (its targets), found by duck typing.

    kind         module                                          techniques
    linear       nn.Linear                                       quant, rank/energy, unstructured
    conv         nn.Conv1d / nn.Conv2d                           quant, unstructured
    attention    q_proj/k_proj/v_proj/out_proj Linears + n_heads prune 'heads'
    ffn          fc1/fc2 Linears                                 prune 'neurons'
    conv_module  pointwise1/depthwise/pointwise2 Conv1d          prune 'channels'

Any nn.Module built from such layers works, not only the workbench's model families.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from torch import nn

from workbench.models.base import role_of

if TYPE_CHECKING:
    from workbench.graph import Group

TargetKind = Literal["linear", "conv", "attention", "ffn", "conv_module"]


@dataclass(frozen=True)
class Target:
    """A module a plan may name: its kind, role ("attention", ...) and block index (or None)."""

    kind: TargetKind
    role: str
    block: int | None
    type_name: str


def target_kind(module: nn.Module) -> TargetKind | None:
    """The kind of target `module` is, or None if a plan cannot name it."""
    if isinstance(module, nn.Linear):
        return "linear"
    if isinstance(module, (nn.Conv1d, nn.Conv2d)):
        return "conv"
    if all(isinstance(getattr(module, n, None), nn.Linear)
           for n in ("q_proj", "k_proj", "v_proj", "out_proj")) and hasattr(module, "n_heads"):
        return "attention"
    if all(isinstance(getattr(module, n, None), nn.Linear) for n in ("fc1", "fc2")):
        return "ffn"
    if all(isinstance(getattr(module, n, None), nn.Conv1d)
           for n in ("pointwise1", "depthwise", "pointwise2")):
        return "conv_module"
    return None


_ROLE_OF_KIND = {"attention": "attention", "ffn": "ffn", "conv_module": "conv"}
_BLOCK_INDEX = re.compile(r"(?:^|\.)(\d+)(?:\.|$)")


def find_targets(model: nn.Module) -> dict[str, Target]:
    """Every module of `model` a plan may name, in module order, with kind, role and block.

    The role comes from the model's ROLES table; when that says "other" (or the model has none),
    a target inside (or being) an attention / FFN / conv module takes that module's role. The
    block is the first integer in the path ("blocks.3.attn.q_proj" -> 3).
    """
    kinds = {path: kind for path, m in model.named_modules() if path
             for kind in [target_kind(m)] if kind is not None}
    out = {}
    for path, kind in kinds.items():
        role = role_of(model, path)
        if role == "other":
            for prefix, prefix_kind in kinds.items():
                if prefix_kind in _ROLE_OF_KIND and (path == prefix or
                                                     path.startswith(prefix + ".")):
                    role = _ROLE_OF_KIND[prefix_kind]
        match = _BLOCK_INDEX.search(path)
        block = int(match.group(1)) if match else None
        out[path] = Target(kind, role, block, type(model.get_submodule(path)).__name__)
    # models that carry groups found from the recorded graph (workbench.byo.adapt): each
    # group is a target by its path, whatever its modules are called
    for group in graph_groups(model).values():
        if group.path not in out:
            match = _BLOCK_INDEX.search(group.path)
            out[group.path] = Target(_GRAPH_KIND[group.kind], group.role,
                                     int(match.group(1)) if match else None, "graph group")
    return out


def graph_groups(model: nn.Module) -> dict[str, Group]:
    """path -> group of a model that carries groups found from its recorded graph
    (`model.graph_structure`, workbench.byo.adapt); {} for any other model."""
    return {g.path: g for g in getattr(getattr(model, "graph_structure", None), "groups", ())}


_GRAPH_KIND: dict[str, TargetKind] = {"heads": "attention", "neurons": "ffn",
                                      "channels": "conv_module"}
