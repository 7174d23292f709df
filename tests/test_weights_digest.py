"""One weights digest for every cache keyed on a model's weights (review 7, finding 20)."""
from __future__ import annotations

import copy

import torch

from workbench.models import conformer_ctc, weights_digest


def test_a_deep_copy_has_the_digest_and_an_in_place_change_another() -> None:
    torch.manual_seed(0)
    model = conformer_ctc("tiny", n_layers=1)
    twin = copy.deepcopy(model)
    assert weights_digest(twin) == weights_digest(model)
    assert weights_digest(model) == weights_digest(dict(reversed(model.state_dict().items())))
    with torch.no_grad():
        twin.blocks[0].ffn1.fc1.weight.mul_(1.0001)
    assert weights_digest(twin) != weights_digest(model)


def test_dtype_shape_and_names_count() -> None:
    t = torch.arange(6, dtype=torch.float32)
    assert weights_digest([t]) == weights_digest([t.clone()])
    assert weights_digest([t]) != weights_digest([t.half()])            # no silent cast
    assert weights_digest([t]) != weights_digest([t.reshape(2, 3)])     # same bytes, new shape
    assert weights_digest({"a": t}) != weights_digest({"b": t})
    assert weights_digest([t, t]) != weights_digest([t])
