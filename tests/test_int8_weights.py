"""Int8 weight storage (`--int8-weights auto|signed|unsigned`): the U8S8 probe on this CPU, the
decision auto makes from the probe's result, and its threading through quantize_graph."""
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from workbench.errors import WorkbenchError
from workbench.onnx_tools import quantize
from workbench.onnx_tools.exporter import MODULE_KEY
from workbench.onnx_tools.graph_map import WeightNode
from workbench.onnx_tools.quantize import (int8_storage, matmul_integer_model, probe_inputs,
                                           run_int32, u8s8_is_exact)
from workbench.plan import QuantConfig
from tests.test_export_grids import saturating_matmul


def vpmaddubsw_product(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a @ b as an x86 U8S8 kernel without VNNI computes it: VPMADDUBSW adds each pair of
    u8 * s8 products into an int16 that saturates, VPMADDWD then widens to int32."""
    prod = a[:, :, None].astype(np.int64) * b[None, :, :].astype(np.int64)   # (m, k, n)
    pairs = np.clip(prod[:, 0::2] + prod[:, 1::2], -32768, 32767)
    return pairs.sum(axis=1)


def test_the_probe_inputs_saturate_a_u8s8_kernel_without_vnni():
    # otherwise the probe would say "exact" on an AVX2 machine too
    a, b = probe_inputs()
    exact = a.astype(np.int64) @ b.astype(np.int64)
    saturated = vpmaddubsw_product(a, b)
    assert np.abs(saturated - exact).max() > 0.2 * np.abs(exact).max()
    assert np.array_equal(vpmaddubsw_product(a // 2, b), (a // 2).astype(np.int64) @ b)


def test_unsigned_storage_is_exact_on_this_cpu():
    a, b = probe_inputs()
    shifted = (b.astype(np.int16) + 128).astype(np.uint8)
    got = run_int32(matmul_integer_model(shifted, np.array(128, dtype=np.uint8)), a)
    np.testing.assert_array_equal(got, a.astype(np.int64) @ b.astype(np.int64))


def test_the_real_probe_agrees_with_a_signed_export_on_this_cpu():
    """u8s8_is_exact() on this CPU is what a signed-weight export of a saturating MatMul shows:
    exact output when the probe says exact, wrong output when it says it saturates."""
    from workbench.onnx_tools.quantize import dynamic_int8

    proto, x, expected = saturating_matmul()
    q = dynamic_int8(proto, [WeightNode("mm", "MatMul", "mm", "W", "x")], weights="signed")
    assert {numpy_helper.to_array(i).dtype for i in q.graph.initializer
            if i.name.startswith("W_")} >= {np.dtype(np.int8)}
    y = ort.InferenceSession(q.SerializeToString(),
                             providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    exact = bool(np.allclose(y, expected, rtol=1e-5, atol=1e-4))
    assert u8s8_is_exact() == exact
    assert u8s8_is_exact() is u8s8_is_exact()                      # cached per process


@pytest.mark.parametrize("probe", [True, False])
def test_auto_follows_the_probe_and_explicit_choices_do_not(probe):
    auto = int8_storage("auto", probe=probe)
    assert auto.signed is probe and auto.u8s8_exact is probe
    assert auto.reason == ("signed int8 weights: this CPU's U8S8 kernel is exact (probe)" if probe
                           else "uint8+128: U8S8 saturates on this CPU (x86 without VNNI, "
                                "e.g. AVX2 only; probe)")
    signed, unsigned = int8_storage("signed", probe=probe), int8_storage("unsigned", probe=probe)
    assert signed.signed and not unsigned.signed
    # every signed choice warns about x86 targets without VNNI; a signed choice on a CPU that
    # saturates also says its results here are wrong
    assert "--int8-weights unsigned" in signed.as_dict()["warning"]
    assert ("wrong" in signed.reason) is (not probe)
    assert "warning" not in unsigned.as_dict()
    assert ("warning" in auto.as_dict()) is probe


def test_unknown_choice_is_one_line():
    with pytest.raises(WorkbenchError) as bad:
        int8_storage("int8")
    assert "\n" not in str(bad.value) and "auto, signed, unsigned" in str(bad.value)


def _two_layer_graph() -> onnx.ModelProto:
    rng = np.random.default_rng(2)
    nodes = [helper.make_node("MatMul", ["x", "W1"], ["h"], name="mm1"),
             helper.make_node("MatMul", ["h", "W2"], ["y"], name="mm2")]
    for node in nodes:                       # the module path the exporter tags each node with
        node.metadata_props.add(key=MODULE_KEY, value=node.name)
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 8])],
        [numpy_helper.from_array(rng.standard_normal((16, 16)).astype(np.float32), "W1"),
         numpy_helper.from_array(rng.standard_normal((16, 8)).astype(np.float32), "W2")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("probe", [True, False])
def test_quantize_graph_stores_what_auto_decides(monkeypatch, probe):
    """Only the probe's RESULT is replaced; the quantizer, the shift and ORT are real."""
    from workbench.export.ort_quantize import quantize_graph

    monkeypatch.setattr(quantize, "u8s8_is_exact", lambda: probe)
    proto = _two_layer_graph()
    layers = {"mm1": ("linear", QuantConfig(weight_bits=8)),
              "mm2": ("linear", QuantConfig(weight_bits=8))}
    q = quantize_graph(proto, layers)
    assert q.int8 is not None and q.int8.signed is probe
    weights = [numpy_helper.to_array(i) for i in q.proto.graph.initializer
               if i.name.endswith("_quantized")]
    assert len(weights) == 2
    assert {w.dtype for w in weights} == {np.dtype(np.int8 if probe else np.uint8)}
    x = np.random.default_rng(3).standard_normal((2, 16)).astype(np.float32)
    outs = {}
    for choice in ("signed", "unsigned"):
        g = quantize_graph(proto, layers, int8_weights=choice)
        outs[choice] = ort.InferenceSession(g.proto.SerializeToString(),
                                            providers=["CPUExecutionProvider"]).run(
                                                None, {"x": x})[0]
    np.testing.assert_array_equal(outs["signed"], outs["unsigned"])   # the same integers
