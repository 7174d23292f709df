"""The tied-embedding rewrite (workbench.onnx_tools.tied_embedding), per storage format the
export's quantizers leave the projection in (review 7, finding 17: it lived inside the Whisper
export, tested only through it).

Each graph: y = x @ W (x (N, K), W (K, V)) and e = Gather(W^T, ids) - an output projection and
its tied input embedding. After the weight is stored in a format and the Gather rewired, ORT
must give, for ids = 0..V-1, exactly the rows of what the MatMul multiplies by: run with
x = identity, y = the weight as the runtime sees it, so e must equal y^T. And the table is
stored once (the Gather's own copy is gone)."""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("onnxruntime")

K, V = 64, 48     # K = 2 blocks of 32 (MatMulNBits)


def _graph(weight: np.ndarray):
    from onnx import TensorProto, helper, numpy_helper
    nodes = [helper.make_node("MatMul", ["x", "W"], ["y"], name="proj"),
             helper.make_node("Gather", ["T", "ids"], ["e"], name="embed", axis=0)]
    graph = helper.make_graph(
        nodes, "tied", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", K]),
                        helper.make_tensor_value_info("ids", TensorProto.INT64, [1, "l"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", V]),
         helper.make_tensor_value_info("e", TensorProto.FLOAT, [1, "l", K])],
        [numpy_helper.from_array(weight, "W"),
         numpy_helper.from_array(np.ascontiguousarray(weight.T), "T")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                   helper.make_opsetid("com.microsoft", 1)],
                             ir_version=8)


def _store(proto, weight: np.ndarray, form: str):
    """The projection's weight in `form`, by the export's own quantizers."""
    from workbench.export.weight_grids import (replace_with_fp16_weights,
                                               replace_with_matmul_nbits)
    from workbench.onnx_tools.graph_map import WeightNode, drop_unused_initializers
    from workbench.onnx_tools.quantize import dynamic_int8
    node = next(n for n in proto.graph.node if n.name == "proj")
    if form == "fp16":
        replace_with_fp16_weights(proto, node, weight)
    elif form.startswith("int8"):
        proto = dynamic_int8(proto, [WeightNode("proj", "MatMul", "proj", "W", "x")],
                             per_channel=form == "int8_per_channel")
    elif form.startswith("nbits"):
        bits, symmetric = int(form.split("_")[1]), form.endswith("sym")
        replace_with_matmul_nbits(proto, node, weight, bits, "per_block", symmetric)
    drop_unused_initializers(proto)
    return proto


FORMS = ["fp32", "fp16", "int8_per_channel", "int8_per_tensor",
         *(f"nbits_{b}_{z}" for b in (2, 4, 8) for z in ("sym", "asym"))]


@pytest.mark.parametrize("form", FORMS)
def test_the_embedding_reads_exactly_what_the_projection_multiplies_by(form) -> None:
    from onnx import numpy_helper

    from workbench.onnx_tools.exporter import to_bytes
    from workbench.onnx_tools.runtime import make_session
    from workbench.onnx_tools.tied_embedding import share_tied_embedding, tied_pairs
    weight = np.random.default_rng(0).standard_normal((K, V)).astype(np.float32)
    proto = _graph(weight)
    pairs = tied_pairs(proto)
    assert pairs == [("embed", "W")]
    proto = _store(proto, weight, form)
    assert share_tied_embedding(proto, pairs) == []
    assert "T" not in {i.name for i in proto.graph.initializer}        # stored once
    session = make_session(to_bytes(proto))
    y, e = session.run(None, {"x": np.eye(K, dtype=np.float32),
                              "ids": np.arange(V, dtype=np.int64)[None]})
    np.testing.assert_allclose(e[0], y.T, rtol=1e-6, atol=1e-6)
    if form != "fp32":                   # and it is the rounded weight, not the original
        assert np.abs(e[0] - weight.T).max() > 0
    stored = {i.name: numpy_helper.to_array(i) for i in proto.graph.initializer}
    assert not any(a.shape == (V, K) and a.dtype == np.float32 for a in stored.values())


def test_a_format_it_cannot_read_is_left_with_the_reason() -> None:
    from workbench.onnx_tools.tied_embedding import share_tied_embedding, tied_pairs
    weight = np.random.default_rng(0).standard_normal((K, V)).astype(np.float32)
    proto = _graph(weight)
    pairs = tied_pairs(proto)
    node = next(n for n in proto.graph.node if n.name == "proj")
    proto.graph.initializer[0].name = "W_unknown"                     # a storage form of its own
    node.input[1] = "W_unknown"
    left = share_tied_embedding(proto, pairs)
    assert len(left) == 1 and left[0].startswith("embed:") and "cannot read" in left[0]
    assert "T" in {i.name for i in proto.graph.initializer}           # kept, not dropped
