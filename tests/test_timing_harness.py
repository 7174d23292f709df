"""One timing harness for every runtime (review 7, finding 15): `time_interleaved` takes a session
factory, so the ExecuTorch .pte is timed by the same rounds, clock and seeded-normal input as
the ONNX models beside it in the reports (it had its own loop on an all-zero input)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from workbench.onnx_tools.runtime import CLOCK, make_session, time_interleaved


def _mean_graph() -> bytes:
    """features (1, 80, T) -> their mean over the channels (1, T); feat_lengths passed on."""
    from onnx import TensorProto, helper
    graph = helper.make_graph(
        [helper.make_node("ReduceMean", ["features"], ["mean"], axes=[1], keepdims=0),
         helper.make_node("Identity", ["feat_lengths"], ["lengths"])], "mean",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, [1, 80, "T"]),
         helper.make_tensor_value_info("feat_lengths", TensorProto.INT64, [1])],
        [helper.make_tensor_value_info("mean", TensorProto.FLOAT, [1, "T"]),
         helper.make_tensor_value_info("lengths", TensorProto.INT64, [1])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)],
                             ir_version=8).SerializeToString()


class _Recorded:
    """A real session that keeps the inputs it was run on."""

    def __init__(self, session) -> None:
        self.session, self.feeds = session, []

    def run(self, names, feeds):
        self.feeds.append(feeds)
        return self.session.run(names, feeds)


def test_the_harness_runs_any_session_factory_on_seeded_normal_features() -> None:
    made = []

    def make(model, threads):
        made.append(_Recorded(make_session(model, threads)))
        return made[-1]
    model = _mean_graph()
    timings = time_interleaved([("a", model, 0.5), ("b", model, 1.0)], threads=1, repeats=3,
                               warmup=1, make=make)
    assert len(made) == 1                                   # one session per distinct model
    assert [f["features"].shape for f in made[0].feeds[:2]] == [(1, 80, 50), (1, 80, 100)]
    x = made[0].feeds[-1]["features"]
    assert x.shape == (1, 80, 100) and abs(float(x.std()) - 1.0) < 0.1   # not zeros
    assert {k: t.runs for k, t in timings.by_job.items()} == {"a": 3, "b": 3}
    assert timings.clock == CLOCK


def test_a_pte_is_timed_by_the_same_harness(tmp_path) -> None:
    pytest.importorskip("executorch")
    from executorch.exir import to_edge

    from workbench.export.executorch import PteSession, pte_latency_ms

    class Mean(torch.nn.Module):
        def forward(self, features, feat_lengths):
            return features.mean(dim=1), feat_lengths * 1

    t = torch.export.Dim("T", min=2, max=2000)
    program = torch.export.export(Mean(), (torch.randn(1, 80, 100), torch.tensor([100])),
                                  dynamic_shapes=({2: t}, None))
    blob = to_edge(program).to_executorch().buffer
    timings = time_interleaved([("pte", blob, 0.5)], repeats=2, warmup=1,
                               make=lambda model, _threads: PteSession(model))
    assert timings.by_job["pte"].runs == 2 and timings.by_job["pte"].ms > 0
    assert pte_latency_ms(blob, 1, 0.5, repeats=2, warmup=1) > 0
    out = PteSession(blob).run(None, {"features": np.ones((1, 80, 7), np.float32),
                                      "feat_lengths": np.array([7])})
    assert out[0].shape == (1, 7)
