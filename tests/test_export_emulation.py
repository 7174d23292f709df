"""Runtime emulation of ONNX Runtime's dynamic int8: the formula equals ORT's own op, and the
emulated simulation is closer to the exported model than the plain simulation."""
import numpy as np
import pytest
import torch

from workbench.export.emulation import emulate_ort_dynamic, fake_quant_dynamic_uint8


def ort_dynamic_roundtrip(x: np.ndarray) -> np.ndarray:
    from onnx import TensorProto, helper

    from workbench.onnx_tools.runtime import make_session
    graph = helper.make_graph(
        [helper.make_node("DynamicQuantizeLinear", ["x"], ["q", "s", "z"]),
         helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x.shape))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, list(x.shape))])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    model.ir_version = 10
    return make_session(model.SerializeToString(), 1).run(None, {"x": x})[0]


@pytest.mark.parametrize("shift", [0.0, 3.0, -3.0])
def test_fake_quant_equals_onnxruntime_dynamic_quantize_linear(shift):
    x = (torch.randn(1, 50, 16, generator=torch.Generator().manual_seed(0)) + shift).numpy()
    ours = fake_quant_dynamic_uint8(torch.from_numpy(x)).numpy()
    theirs = ort_dynamic_roundtrip(x)
    scale = (max(x.max(), 0) - min(x.min(), 0)) / 255
    assert np.abs(ours - theirs).max() <= 1e-6 + 1e-3 * scale   # same grid (fp rounding at most)
    assert np.abs(ours - x).max() <= scale / 2 + 1e-6


def test_all_zero_input_is_left_alone():
    x = torch.zeros(1, 4, 8)
    assert torch.equal(fake_quant_dynamic_uint8(x), x)


def test_emulated_simulation_is_closer_to_onnxruntime(tiny_conformer):
    from workbench.export.reference_plans import int8_plan
    from workbench.export.pipeline import build_export
    from workbench.export.verify import ort_log_probs
    from workbench.onnx_tools.runtime import make_session
    export = build_export(tiny_conformer, int8_plan())
    emulated = emulate_ort_dynamic(export.sim, export.decisions)
    session = make_session(export.model, 1)
    feats = torch.randn(80, 240, generator=torch.Generator().manual_seed(1))
    ort, n = ort_log_probs(session, feats)
    with torch.inference_mode():
        sim = export.sim(feats[None], torch.tensor([240]))[0][0, :n].numpy()
        emu = emulated(feats[None], torch.tensor([240]))[0][0, :n].numpy()
    assert np.abs(emu - ort[:n]).max() < 0.5 * np.abs(sim - ort[:n]).max()
    hooked = sum(len(m._forward_pre_hooks) for m in emulated.modules())
    assert hooked == sum(d.method == "int8_dynamic" and d.kind == "linear"
                         for d in export.decisions) > 0
    assert all(len(m._forward_pre_hooks) == 0 for m in export.sim.modules())   # sim unchanged


def test_each_emulated_layer_equals_onnxruntime_given_the_same_input(tiny_conformer):
    # Per layer, the emulation is ORT's arithmetic: feed each int8 layer the fp32 input ORT saw
    # (DynamicQuantizeLinear's input) and compare with ORT's dequantized MatMulInteger output.
    # What is left between the two whole models is fp32 rounding (LayerNorm, softmax, ...)
    # flipping a few roundings of the uint8 inputs, which then propagate.
    import onnx
    from onnx import TensorProto, helper

    from workbench.export.reference_plans import int8_plan
    from workbench.onnx_tools.runtime import feature_feeds
    from workbench.export.pipeline import build_export
    from workbench.onnx_tools.runtime import make_session
    export = build_export(tiny_conformer, int8_plan())
    emulated = emulate_ort_dynamic(export.sim, export.decisions)
    proto = onnx.ModelProto.FromString(export.model)
    by_name = {n.name: n for n in proto.graph.node}
    quantizer_of = {n.output[0]: n for n in proto.graph.node if n.op_type == "DynamicQuantizeLinear"}
    taps = {}
    for d in export.decisions:
        if d.method != "int8_dynamic" or d.kind != "linear":
            continue
        node = export.layer_nodes[d.path][0]
        matmul = by_name[f"{node}_quant"]
        assert matmul.op_type == "MatMulInteger"
        taps[d.path] = (quantizer_of[matmul.input[0]].input[0],
                        by_name[f"{node}_quant_output_scale_mul"].output[0])
    for name in sorted({t for pair in taps.values() for t in pair}):
        proto.graph.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, None))
    session = make_session(proto.SerializeToString(), 1)
    feats = torch.randn(80, 240, generator=torch.Generator().manual_seed(2))
    got = dict(zip([o.name for o in session.get_outputs()], session.run(None,
                                                                        feature_feeds(feats))))
    assert len(taps) > 4
    for path, (x_name, y_name) in taps.items():
        layer = emulated.get_submodule(path)
        x = torch.from_numpy(got[x_name])
        with torch.inference_mode():
            # the layer's pre-hook quantizes x per tensor; subtract the bias ORT adds later
            y = layer(x) - (layer.bias if layer.bias is not None else 0)
            y_plain = torch.nn.functional.linear(x, layer.weight)     # no input rounding
        ort_y = got[y_name].reshape(y.shape)
        scale = float(np.abs(ort_y).max()) + 1e-6
        assert np.abs(y.numpy() - ort_y).max() <= 1e-4 * scale, path
        assert np.abs(y_plain.numpy() - ort_y).max() > 10 * np.abs(y.numpy() - ort_y).max(), path
