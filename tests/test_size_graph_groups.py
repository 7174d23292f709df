"""size() of a plan on an adapted model computes no importance scores when the pruned group's
units are all the same size (review 7, finding 9): any choice of that many heads / neurons
removes the same slices' worth of shapes, so the count is all it needs (it used to score the
weights and cache the scores on tensor versions)."""
from __future__ import annotations

import sys

import pytest

from toys import torchaudio_conformer
from workbench import compress, size
from workbench.byo import adapt
from workbench.plan import CompressionPlan, LayerConfig, PruneConfig


@pytest.fixture(scope="module")
def conformer():
    return adapt(torchaudio_conformer())


@pytest.mark.parametrize("importance", ["magnitude", "taylor"])
def test_size_of_an_adapted_model_needs_no_scores(conformer, importance, monkeypatch) -> None:
    plan = (CompressionPlan()
            .with_group("ffn", LayerConfig(prune=PruneConfig(
                structure="neurons", amount=0.5, importance="magnitude")))
            .with_group("attention", LayerConfig(prune=PruneConfig(
                structure="heads", amount=0.5, importance=importance))))
    if importance == "magnitude":
        expected = sum(p.numel() for p in compress(conformer, plan).parameters())
    else:   # Taylor needs calibration to compress; the shapes are those of magnitude's choice
        expected = sum(p.numel() for p in compress(conformer, plan.with_group(
            "attention", LayerConfig(prune=PruneConfig(structure="heads", amount=0.5))))
            .parameters())

    def no_scores(*args, **kwargs):
        raise AssertionError("size() computed importance scores")
    monkeypatch.setattr("workbench.graph.surgery.scores", no_scores)
    # (workbench.size is also the name of the size() verb: patch the module itself)
    monkeypatch.setattr(sys.modules["workbench.size"], "taylor_gradients", no_scores)
    assert size(conformer, plan).params == expected
    assert expected < sum(p.numel() for p in conformer.parameters())
