"""A tiny host calibration end to end (export, ORT int8, timing, fit, cache file) and the
name-scope mapping the int8 export relies on (the ONNX toolbox shared with workbench.export)."""
from __future__ import annotations

import json

import torch

from workbench.latency import load_device, predict_latency
from workbench.latency.fit_host import calibrate
from workbench.models import build_model
from workbench.plan import CompressionPlan, LayerConfig, QuantConfig


def test_tiny_calibration_writes_the_cache_and_calibrates_host(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("WORKBENCH_CACHE_DIR", str(tmp_path))
    torch.manual_seed(0)
    model = build_model("whisper_ctc", d_model=32, n_heads=2, n_layers=2, d_ff=64, n_ctx=200,
                        head_dim=16).eval()
    plan = CompressionPlan().with_group("ffn", LayerConfig(quant=QuantConfig(weight_bits=8)))
    record = calibrate(model=model, plans={"ffn_int8": plan}, seconds=(1.0, 2.0), repeats=3)
    path = tmp_path / "host_profile.json"
    assert record["path"] == str(path) and path.is_file()
    assert json.loads(path.read_text())["calibrated_at"] == record["calibrated_at"]
    # the two FFN Linears of each block went through ONNX Runtime's dynamic int8 quantizer
    assert record["variants"]["ffn_int8"] == {
        "int8_layers": 4, "int8_matmuls": 4, "int4_layers": 0, "nbits_matmuls": 0, "int8_convs": 0,
        "macs_at_max_seconds": record["variants"]["ffn_int8"]["macs_at_max_seconds"]}
    points = record["points"]
    assert [p["seconds"] for p in points] == [1.0, 2.0]
    assert all(p["measured_ms"] > 0 and p["predicted_ms"] > 0 for p in points)
    assert all(v > 0 for v in record["efficiency"].values())
    host = load_device("host")
    assert host.calibrated and host.calibrated_at == record["calibrated_at"]
    assert host.error_band_pct == record["error_band_pct"]
    report = predict_latency(model, "host", 2.0)
    assert report.calibrated and f"calibrated {record['calibrated_at']}" in report.source
    # the fit reproduces its own points (in-sample) well
    assert record["mape_pct"] < 25


def test_matmul_nodes_map_to_module_paths() -> None:
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    from workbench.onnx_tools.exporter import keep_module_paths_only
    from workbench.onnx_tools.graph_map import nodes_of_layer, weight_nodes

    w = numpy_helper.from_array(np.ones((4, 4), np.float32), "w")
    node = helper.make_node("MatMul", ["x", "w"], ["y"], name="node_linear_3")
    meta = node.metadata_props.add()
    meta.key, meta.value = ("pkg.torch.onnx.name_scopes",
                            "['', 'blocks.0', 'blocks.0.mlp', 'blocks.0.mlp.fc1', 'linear_3']")
    act = helper.make_node("MatMul", ["y", "y"], ["z"], name="node_scores")  # no weight: skipped
    graph = helper.make_graph([node, act], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 4])],
                              [helper.make_tensor_value_info("z", TensorProto.FLOAT, [4, 4])],
                              initializer=[w])
    proto = helper.make_model(graph)
    keep_module_paths_only(proto)
    assert [(n.name, n.module) for n in weight_nodes(proto)] == [("node_linear_3",
                                                                  "blocks.0.mlp.fc1")]
    assert [n.name for n in nodes_of_layer(weight_nodes(proto), "blocks.0.mlp", "linear")] == [
        "node_linear_3"]
