"""model_copy(update=...) of every plan class validates like construction (review 7, finding 8):
pydantic's own skips validation, so a copy could hold what no plan file can, and fail late,
deep inside compress."""
from __future__ import annotations

import pytest

from workbench.errors import PlanError
from workbench.plan import (CompressionPlan, GroupEntry, LayerConfig, PruneConfig,
                            QuantConfig)

BAD_UPDATES = [
    (PruneConfig(amount=0.5), {"amount": 1.5}, r"PruneConfig\.amount"),
    (PruneConfig(amount=0.5), {"structure": "rows"}, r"PruneConfig\.structure"),
    (QuantConfig(weight_bits=8), {"weight_bits": 9}, r"QuantConfig\.weight_bits"),
    (QuantConfig(weight_bits=8), {"act_bits": 4}, r"QuantConfig\.act_bits"),
    (LayerConfig(rank=8), {"rank": 0}, r"LayerConfig\.rank"),
    (LayerConfig(rank=8), {"energy": 0.9}, r"LayerConfig: .*rank or energy"),
    (LayerConfig(), {"quant": {"weight_bits": 9}}, r"LayerConfig\.quant\.weight_bits"),
    (GroupEntry(role="ffn", config=LayerConfig(rank=4)), {"blocks": (-1,)},
     r"GroupEntry\.blocks"),
    (CompressionPlan(), {"layers": {"blocks 0": LayerConfig(rank=4)}}, r"CompressionPlan\.layers"),
]


@pytest.mark.parametrize("obj, update, field", BAD_UPDATES,
                         ids=[f"{type(o).__name__}-{next(iter(u))}" for o, u, _ in BAD_UPDATES])
def test_a_bad_model_copy_update_raises_a_plan_error_naming_the_field(obj, update, field) -> None:
    with pytest.raises(PlanError, match=field):
        obj.model_copy(update=update)


def test_a_good_update_gives_the_validated_object() -> None:
    q = QuantConfig(weight_bits=8).model_copy(update={"weight_bits": 4})
    assert q == QuantConfig(weight_bits=4)
    entry = LayerConfig(rank=8).model_copy(update={"rank": None, "energy": 0.9})
    assert entry == LayerConfig(energy=0.9)
    assert LayerConfig(rank=8).model_copy() == LayerConfig(rank=8)


def test_a_copy_keeps_registered_technique_settings() -> None:
    entry = LayerConfig(grouped_ffn={"groups": 2})
    copy = entry.model_copy(update={"rank": 4})
    assert copy.get("grouped_ffn") == entry.get("grouped_ffn") and copy.rank == 4
