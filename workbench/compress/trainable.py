"""What a recovery trains, when not everything (RecoverConfig.train of
workbench.compress.distill): the layers, or the blocks, a compression changed.

    changed_parameters(student, teacher, "changed_layers") -> {"blocks.0.mlp.fc1.weight", ...}

A layer (a module owning parameters) is changed when the teacher has no layer at its path, or
one with other parameter names, shapes or values: pruned, factorized, swapped.
"""
from __future__ import annotations

import torch

from workbench.errors import WorkbenchError
from workbench.models.base import role_of


def changed_parameters(student: torch.nn.Module, teacher: torch.nn.Module, train: str
                       ) -> set[str]:
    """Names of the student's parameters that `train` (a changed_* choice) selects: a layer
    (module owning parameters) is changed when the teacher has no layer at its path, or one
    with other parameter names, shapes or values (pruned, factorized, swapped)."""
    mine = {path: m for path, m in student.named_modules()
            if any(True for _ in m.parameters(recurse=False))}
    theirs = dict(teacher.named_modules())

    def changed(path: str, module: torch.nn.Module) -> bool:
        other = theirs.get(path)
        if other is None:
            return True
        a, b = dict(module.named_parameters(recurse=False)), dict(
            other.named_parameters(recurse=False))
        return a.keys() != b.keys() or any(a[k].shape != b[k].shape or not torch.equal(a[k], b[k])
                                           for k in a)

    layers = {path for path, m in mine.items() if changed(path, m)}
    if not layers:
        raise WorkbenchError(f"RecoverConfig.train={train!r}: the student has no layer that "
                             f"differs from the teacher's; nothing to train. Use train='all'.")
    if train == "changed_blocks":
        blocks = {".".join(p.split(".")[:2]) for p in layers if p.startswith("blocks.")}
        layers |= {p for p in mine if ".".join(p.split(".")[:2]) in blocks}
    elif train == "changed_layers+norms":
        layers |= {p for p, m in mine.items() if _is_norm(student, p, m)}
    return {f"{path}.{name}" if path else name for path in layers
            for name, _ in mine[path].named_parameters(recurse=False)}


def _is_norm(model: torch.nn.Module, path: str, module: torch.nn.Module) -> bool:
    return role_of(model, path) == "norm" or isinstance(
        module, torch.nn.LayerNorm | torch.nn.GroupNorm | torch.nn.modules.batchnorm._BatchNorm)


def first_trained_block(model: torch.nn.Module) -> int:
    """Index of the first block with a parameter that trains (len(blocks) if none does)."""
    for k, block in enumerate(model.blocks):
        if any(p.requires_grad for p in block.parameters()):
            return k
    return len(model.blocks)
