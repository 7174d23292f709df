"""One digest of model weights, for every cache keyed on them (recovery's checkpoint cache, the
conditions' baseline transcripts).

    weights_digest(model)              sha1 hex of its state dict: names, dtypes, shapes, bytes
    weights_digest({name: tensor})     the same for named tensors
    weights_digest([t0, t1, ...])      unnamed tensors, in the order given

Names are taken in sorted order, so two models with equal weights registered in a different
order get the same key; the bytes are the tensors' own (no cast), so an fp16 copy is a different
model. A deep copy gives the same digest; any in-place change of a weight gives another.
"""
from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping

import torch
from torch import nn


def weights_digest(weights: nn.Module | Mapping[str, torch.Tensor] | Iterable[torch.Tensor]
                   ) -> str:
    """sha1 hex over (name,) dtype, shape and bytes of each tensor (see the module docstring)."""
    if isinstance(weights, nn.Module):
        weights = weights.state_dict()
    items = (sorted(weights.items()) if isinstance(weights, Mapping)
             else [(None, t) for t in weights])
    h = hashlib.sha1()
    for name, t in items:
        t = t.detach().cpu().contiguous()
        if name is not None:
            h.update(name.encode() + b"\0")
        h.update(f"{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().data)
    return h.hexdigest()
