"""Weights written for ONNX Runtime sit exactly on the grid the simulation used.

Small hand-built ONNX graphs (no model export): a MatMul / Conv whose weight we rewrite, run in
ONNX Runtime on an identity input, so the output *is* the weight ORT computes with.
"""
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from workbench.compress.quantize import fake_quant_weight
from workbench.export.positions import (compute_sinusoid_tables, graph_table,
                                        whisper_sinusoid_table)
from workbench.onnx_tools.graph_map import drop_unused_initializers
from workbench.export.weight_grids import (matmul_nbits_arrays,
                                           plan_grid, replace_with_dq_weights,
                                           replace_with_fp16_weights, replace_with_matmul_nbits)
from workbench.models.whisper_ctc import whisper_sinusoids

K, N = 96, 24   # K = 3 blocks of 32; N output channels


def matmul_model(weight: np.ndarray) -> onnx.ModelProto:
    k, n = weight.shape
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["y"], name="mm")], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, n])],
        [numpy_helper.from_array(weight, "W")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21),
                                                   helper.make_opsetid("com.microsoft", 1)])


def run(model: onnx.ModelProto, feeds: dict) -> np.ndarray:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)[0]


def weight_seen_by_ort(model: onnx.ModelProto, k: int) -> np.ndarray:
    """(K, N): the matrix ORT multiplies by, read through an identity input."""
    return run(model, {"x": np.eye(k, dtype=np.float32)})


@pytest.fixture(scope="module")
def weight() -> np.ndarray:
    w = np.random.default_rng(0).standard_normal((K, N)).astype(np.float32)
    w[:, 3] *= 20.0  # one column with a much larger range: per-channel scales must differ
    return w


@pytest.mark.parametrize("bits", [2, 4, 8])
@pytest.mark.parametrize("granularity", ["per_block", "per_channel", "per_tensor"])
@pytest.mark.parametrize("symmetric", [True, False])
def test_matmul_nbits_runs_the_simulated_grid(weight, bits, granularity, symmetric):
    model = matmul_model(weight)
    replace_with_matmul_nbits(model, model.graph.node[0], weight, bits, granularity, symmetric)
    drop_unused_initializers(model)
    assert [n.op_type for n in model.graph.node] == ["MatMulNBits"]
    assert "W" not in {i.name for i in model.graph.initializer}   # no fp32 copy left
    expected, _, _ = fake_quant_weight(torch.from_numpy(weight.T.copy()), bits, granularity,
                                       symmetric)
    seen = weight_seen_by_ort(model, K)
    # Same integers and scales: equal up to fp32 rounding of q * scale (1e-6 relative).
    np.testing.assert_allclose(seen, expected.numpy().T, rtol=1e-6, atol=1e-6)


def test_our_layout_is_onnxruntime_s_layout(weight):
    """Where ORT's own quantizer uses the same grid (asymmetric, block 32) the bytes match."""
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    quantizer = MatMulNBitsQuantizer(matmul_model(weight), bits=4, block_size=32,
                                     is_symmetric=False, nodes_to_include=["mm"])
    quantizer.process()
    theirs = {i.name: numpy_helper.to_array(i) for i in quantizer.model.model.graph.initializer}
    b, scales, zps = matmul_nbits_arrays(plan_grid(weight.T, 4, "per_block", False), 32)
    np.testing.assert_array_equal(b, theirs["W_Q4"])
    # Scales within one float32 step: compress computes them in float64, ORT in float32.
    np.testing.assert_allclose(scales, theirs["W_scales"].reshape(scales.shape), rtol=2.4e-7)
    np.testing.assert_array_equal(zps, theirs["W_zero_points"].reshape(zps.shape))


def test_dynamic_int8_weights_equal_the_simulated_grid(weight, tmp_path):
    """quantize_dynamic (per channel, symmetric) picks the grid compress simulates."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    src, dst = tmp_path / "a.onnx", tmp_path / "b.onnx"
    onnx.save(matmul_model(weight), str(src))
    quantize_dynamic(str(src), str(dst), op_types_to_quantize=["MatMul"], per_channel=True,
                     weight_type=QuantType.QInt8, nodes_to_quantize=["mm"])
    q = onnx.load(str(dst))
    assert [n.op_type for n in q.graph.node].count("MatMulInteger") == 1
    inits = {i.name: numpy_helper.to_array(i) for i in q.graph.initializer}
    w_int8 = inits["W_quantized"].astype(np.float32)
    scale = inits["W_scale"].astype(np.float32)
    expected, sim_scale, _ = fake_quant_weight(torch.from_numpy(weight.T.copy()), 8)
    np.testing.assert_allclose(scale, sim_scale.numpy(), rtol=1e-6)
    np.testing.assert_allclose(w_int8 * scale[None, :], expected.numpy().T, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("symmetric", [True, False])
def test_conv_weights_dequantize_to_the_simulated_grid(bits, symmetric):
    rng = np.random.default_rng(1)
    w = rng.standard_normal((6, 4, 3)).astype(np.float32)          # (out, in, k)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "W"], ["y"], name="conv")], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 6, 1])],
        [numpy_helper.from_array(w, "W")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    replace_with_dq_weights(model, model.graph.node[0], w, bits, "per_channel", symmetric)
    drop_unused_initializers(model)
    assert [n.op_type for n in model.graph.node] == ["DequantizeLinear", "Conv"]
    expected, _, _ = fake_quant_weight(torch.from_numpy(w), bits, "per_channel", symmetric)
    # A one-hot input per (in, k) position reads one weight column per run.
    seen = np.zeros_like(w)
    for c in range(4):
        for t in range(3):
            x = np.zeros((1, 4, 3), np.float32)
            x[0, c, t] = 1.0
            seen[:, c, t] = run(model, {"x": x})[0, :, 0]
    np.testing.assert_allclose(seen, expected.numpy(), rtol=1e-6, atol=1e-7)


def test_fp16_weights_equal_fp16_rounding(weight):
    model = matmul_model(weight)
    replace_with_fp16_weights(model, model.graph.node[0], weight)
    drop_unused_initializers(model)
    assert [n.op_type for n in model.graph.node] == ["Cast", "MatMul"]
    np.testing.assert_array_equal(weight_seen_by_ort(model, K),
                                  weight.astype(np.float16).astype(np.float32))


def test_sinusoid_table_becomes_its_formula_with_the_same_values():
    rows, channels = 100, 16
    table = whisper_sinusoids(rows, channels).numpy()      # fp16-rounded, like the checkpoints
    graph = helper.make_graph(
        [helper.make_node("Slice", ["table", "starts", "t", "axes"], ["y"], name="slice")], "g",
        [helper.make_tensor_value_info("t", TensorProto.INT64, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, channels])],
        [numpy_helper.from_array(table, "table"),
         numpy_helper.from_array(np.array([0], np.int64), "starts"),
         numpy_helper.from_array(np.array([0], np.int64), "axes")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    done = compute_sinusoid_tables(model)
    assert len(done) == 1 and done[0].fp16_rounded and done[0].max_abs_diff == 0.0
    assert done[0].bytes_saved == 4 * rows * channels
    assert "table" not in {i.name for i in model.graph.initializer}
    assert model.ByteSize() < 4 * rows * channels / 4
    # no Cos: onnxruntime 1.22 (the ARM64 check's runtime) has no float64 Cos kernel
    assert "Cos" not in {n.op_type for n in model.graph.node}
    out = run(model, {"t": np.array([37], np.int64)})
    np.testing.assert_array_equal(out, table[:37])           # bit for bit


def test_the_sin_only_graph_equals_the_whisper_table_at_full_size():
    # 1500 x 384: every row of the demo model's table; numpy's model of the graph and the graph
    # run in onnxruntime both equal the torch table (float64 -> fp16 rounds through float32)
    table = whisper_sinusoids(1500, 384).numpy()
    np.testing.assert_array_equal(graph_table(1500, 384), table)
    graph = helper.make_graph(
        [helper.make_node("Slice", ["table", "starts", "t", "axes"], ["y"], name="slice")], "g",
        [helper.make_tensor_value_info("t", TensorProto.INT64, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 384])],
        [numpy_helper.from_array(table, "table"),
         numpy_helper.from_array(np.array([0], np.int64), "starts"),
         numpy_helper.from_array(np.array([0], np.int64), "axes")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    assert len(compute_sinusoid_tables(model)) == 1
    np.testing.assert_array_equal(run(model, {"t": np.array([1500], np.int64)}), table)


def test_a_table_that_is_not_the_formula_is_left_as_data():
    table = whisper_sinusoid_table(100, 16) + np.float32(1e-3)   # e.g. learned positions
    graph = helper.make_graph(
        [helper.make_node("Slice", ["table", "starts", "t"], ["y"], name="slice")], "g",
        [helper.make_tensor_value_info("t", TensorProto.INT64, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 16])],
        [numpy_helper.from_array(table, "table"),
         numpy_helper.from_array(np.array([0], np.int64), "starts")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    assert compute_sinusoid_tables(model) == []
    assert "table" in {i.name for i in model.graph.initializer}


def saturating_matmul():
    """A MatMul whose int8 product saturates VPMADDUBSW's int16 pair sums (U8S8 without VNNI):
    weights all at +-127, inputs mostly at uint8 255. Returns (proto, x, exact output)."""
    k, n = 384, 64
    rng = np.random.default_rng(0)
    w = np.where(rng.random((k, n)) < 0.5, -1.0, 1.0).astype(np.float32)   # all at +-127
    x = np.full((4, k), 1.0, dtype=np.float32)
    x[:, 0] = -0.01                                  # a range [-0.01, 1]: most inputs -> 255
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "W"], ["y"], name="mm")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, k])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, n])],
                              [numpy_helper.from_array(w, "W")])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    # The exact product on ORT's uint8 input grid (asymmetric, round half to even).
    scale = (1.0 - (-0.01)) / 255
    zp = np.round(0.01 / scale)
    xq = np.clip(np.round(x / scale) + zp, 0, 255)
    return proto, x, ((xq - zp) * scale) @ w


@pytest.mark.parametrize("weights", ["unsigned", "auto"])
def test_int8_matmul_is_exact_where_u8s8_would_saturate(weights):
    """uint8 + 128 weights (same integers): ORT computes the exact integer product even for
    inputs near 255 times weights near +-127, where the U8S8 kernel of AVX2 CPUs without VNNI
    saturates its int16 pair sums (37 % off on those machines), on every CPU. auto: signed int8
    weights only where this CPU's probe found U8S8 exact (VNNI), and exact either way."""
    from workbench.onnx_tools.graph_map import WeightNode
    from workbench.onnx_tools.quantize import dynamic_int8, u8s8_is_exact

    proto, x, expected = saturating_matmul()
    q = dynamic_int8(proto, [WeightNode("mm", "MatMul", "mm", "W", "x")], weights=weights)
    inits = {i.name: numpy_helper.to_array(i) for i in q.graph.initializer}
    signed = weights == "auto" and u8s8_is_exact()
    stored = np.int8 if signed else np.uint8
    assert inits["W_quantized"].dtype == stored and inits["W_zero_point"].dtype == stored
    shift = 0 if signed else 128
    assert set(np.unique(inits["W_quantized"])) == {-127 + shift, 127 + shift}
    y = ort.InferenceSession(q.SerializeToString(),
                             providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-4)
