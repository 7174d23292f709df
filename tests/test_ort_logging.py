"""ORT's quantizer advice is filtered at its source, not by changing the root logger's level
(review 7, finding 26): exports run on job threads while the UI and other jobs log, and a
root level of ERROR for the duration of a quantization dropped their records too."""
from __future__ import annotations

import logging

import numpy as np
import pytest

pytest.importorskip("onnxruntime")


def _matmul_graph():
    """x (1, 8) @ W (8, 4): one MatMul with a constant weight."""
    from onnx import TensorProto, helper, numpy_helper
    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((8, 4))
                                .astype(np.float32), "W")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "W"], ["y"], name="mm")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
                              [w])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def test_quantizing_leaves_the_root_level_alone_and_drops_only_orts_advice(caplog,
                                                                           monkeypatch) -> None:
    from workbench.onnx_tools.graph_map import WeightNode
    from workbench.onnx_tools.quantize import dynamic_int8
    root = logging.getLogger()
    levels = []
    real = logging.Logger.setLevel

    def spy(self, level):
        if self is root:
            levels.append(level)
        real(self, level)
    monkeypatch.setattr(logging.Logger, "setLevel", spy)
    caplog.set_level(logging.INFO)
    levels.clear()                          # (caplog itself sets the level once)
    out = dynamic_int8(_matmul_graph(), [WeightNode("mm", "MatMul", "mm", "W", "x")])
    assert "MatMulInteger" in {n.op_type for n in out.graph.node}
    assert levels == []                                      # never touched
    assert not [r for r in caplog.records if "onnxruntime" in r.pathname]
    logging.getLogger("workbench.app").warning("the app's own warning")
    logging.warning("a root warning from elsewhere")
    assert [r.getMessage() for r in caplog.records][-2:] == [
        "the app's own warning", "a root warning from elsewhere"]


def test_the_filter_passes_orts_errors_and_other_modules() -> None:
    from workbench.onnx_tools.quantize import _ADVICE_FILTER

    def record(path, level):
        return logging.LogRecord("root", level, path, 1, "m", None, None)
    ort = "/venv/site-packages/onnxruntime/quantization/quantize.py"
    assert not _ADVICE_FILTER.filter(record(ort, logging.WARNING))
    assert _ADVICE_FILTER.filter(record(ort, logging.ERROR))
    assert _ADVICE_FILTER.filter(record("/work/workbench/ui/app.py", logging.WARNING))


def test_orts_quantizer_logs_advice_without_the_filter(caplog, tmp_path) -> None:
    """(So the first test checks something: ORT does log on the root logger here.)"""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from workbench.onnx_tools.exporter import to_bytes
    from workbench.onnx_tools.quantize import _ADVICE_FILTER
    root = logging.getLogger()
    root.removeFilter(_ADVICE_FILTER)
    try:
        caplog.set_level(logging.INFO)
        (tmp_path / "in.onnx").write_bytes(to_bytes(_matmul_graph()))
        quantize_dynamic(str(tmp_path / "in.onnx"), str(tmp_path / "out.onnx"),
                         weight_type=QuantType.QInt8)
        assert [r for r in caplog.records if "onnxruntime/quantization" in r.pathname]
    finally:
        root.addFilter(_ADVICE_FILTER)
