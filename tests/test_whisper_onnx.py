"""ONNX export of the full Whisper model (tiny random model): encoder, cross keys/values and one
decoder graph with per-layer past / cross key-value inputs (an empty past for the prompt pass);
the greedy loop over ORT gives PyTorch's tokens."""
import numpy as np
import pytest
import torch

from workbench.models.whisper_ctc import WhisperCTCConfig
from workbench.models.whisper_decoder import WhisperDecoderConfig
from workbench.models.whisper_full import DecodeRules, WhisperASR

torch.set_num_threads(1)
pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    from workbench.export.whisper_onnx import export_whisper
    torch.manual_seed(0)
    rules = DecodeRules(prompt=(50, 51), eot=49, suppress=(50, 51), suppress_begin=(0, 49),
                        timestamp_begin=52)
    model = WhisperASR(WhisperCTCConfig(d_model=32, n_heads=4, n_layers=2, d_ff=64, n_ctx=1500,
                                        head_dim=16),
                       WhisperDecoderConfig(n_vocab=60, n_ctx=64, d_model=32, n_heads=4,
                                            n_layers=2, d_ff=64), rules).eval()
    with torch.no_grad():
        model.decoder.positional_embedding.normal_(0, 0.1)
    return model, export_whisper(model, tmp_path_factory.mktemp("onnx"))


def test_graphs_have_past_and_cross_key_values(exported):
    import onnx
    _, paths = exported
    assert sorted(paths) == ["cross_kv", "decoder", "encoder"]
    dec = onnx.load(str(paths["decoder"]))
    inputs = [i.name for i in dec.graph.input]
    outputs = [o.name for o in dec.graph.output]
    assert inputs[0] == "tokens" and "past_key_1" in inputs and "cross_value_1" in inputs
    assert outputs == ["logits", "present_key_0", "present_value_0", "present_key_1",
                       "present_value_1"]
    cross = onnx.load(str(paths["cross_kv"]))
    assert [o.name for o in cross.graph.output][-1] == "cross_value_1"
    # the decoder's cross-attention keys/values come in as inputs: their weights are only in
    # cross_kv, so no weight is stored in two graphs
    names = [{i.name for i in onnx.load(str(p)).graph.initializer} for p in paths.values()]
    assert not (names[0] & names[1]) and not (names[1] & names[2]) and not (names[0] & names[2])


def test_prompt_pass_with_empty_past_equals_pytorch(exported):
    """The decoder graph with P = 0 and the 2-token prompt (causal mask from run-time lengths)
    gives the model's first logits."""
    from workbench.export.whisper_onnx import OrtWhisper
    model, paths = exported
    ort_model = OrtWhisper(paths, model.rules, 2)
    torch.manual_seed(4)
    enc = torch.randn(1, 70, 32)
    logits, past, _ = ort_model.prompt(enc.numpy())
    with torch.no_grad():
        ref, cache = model.decoder(torch.tensor([list(model.rules.prompt)]),
                                   model.decoder.init_cache(enc))
    assert np.abs(logits - ref.numpy()).max() < 1e-4
    assert past[0].shape == tuple(cache[0][0].shape) == (1, 4, 2, 8)


def test_ort_greedy_loop_equals_pytorch(exported):
    from workbench.export.whisper_onnx import OrtWhisper
    from workbench.whisper_eval import decode_all, encode_all, silence_tail
    model, paths = exported
    ort_model = OrtWhisper(paths, model.rules, 2)
    torch.manual_seed(3)
    feats = [torch.randn(80, 57), torch.randn(80, 140)]
    ours = decode_all(model, encode_all(model, feats), [1.0, 1.0], silence_tail(model))
    theirs = [ort_model.transcribe_ids(f.numpy(), 24) for f in feats]
    assert theirs == ours
    enc = ort_model.encode(np.zeros((80, 30), np.float32))
    ref = model.encoder.encode(torch.zeros(1, 80, 30))[0]
    assert np.abs(enc - ref.detach().numpy()).max() < 1e-4


def test_dynamic_activation_fake_quant_matches_ort_rounding():
    from workbench.whisper_eval import _dynamic_uint8
    torch.manual_seed(0)
    x = torch.randn(3, 5, 16) * torch.tensor([1.0, 10.0, 0.1])[:, None, None]
    y = _dynamic_uint8(x)
    for i in range(3):  # per item: error at most half a step of that item's own range
        step = (x[i].max().clamp(min=0) - x[i].min().clamp(max=0)) / 255
        assert (y[i] - x[i]).abs().max() <= step / 2 + 1e-6
    assert float(_dynamic_uint8(torch.zeros(1, 4)).abs().max()) == 0.0


def test_ort_dynamic_activations_hooks_only_int8_layers_and_unhooks(exported):
    from workbench.compress import compress
    from workbench.plan import CompressionPlan, LayerConfig, QuantConfig
    from workbench.whisper_eval import ort_dynamic_activations
    model, _ = exported
    q = compress(model, CompressionPlan().with_layer(
        "decoder.blocks.0.mlp.fc1", LayerConfig(quant=QuantConfig(weight_bits=8))))
    with ort_dynamic_activations(q) as hooked:
        n_hooks = sum(len(m._forward_pre_hooks) for m in hooked.modules())
    assert n_hooks == 1
    assert sum(len(m._forward_pre_hooks) for m in q.modules()) == 0


def test_encoder_computes_its_position_table_instead_of_storing_it(exported):
    """The sinusoid table (1500 x 32 fp32 here, 2.3 MB on tiny.en) is not in encoder.onnx, and
    the graph's own table gives the model's output at every position (30 s input)."""
    import onnx
    from onnx import numpy_helper
    from workbench.export.whisper_onnx import OrtWhisper
    model, paths = exported
    proto = onnx.load(str(paths["encoder"]))
    tensors = list(proto.graph.initializer) + [a.t for n in proto.graph.node
                                               if n.op_type == "Constant" for a in n.attribute]
    assert max(numpy_helper.to_array(t).size for t in tensors) < 1500 * 32
    torch.manual_seed(5)
    mel = torch.randn(80, 3000)
    got = OrtWhisper(paths, model.rules, 2).encode(mel.numpy())
    ref = model.encoder.encode(mel[None])[0].detach().numpy()
    assert got.shape == ref.shape == (1, 1500, 32)
    assert np.abs(got - ref).max() < 2e-3          # fp32 sums over 1500 positions differ a bit


def test_in_graph_position_table_is_bit_exact(tmp_path):
    """The formula the encoder graph evaluates (float64 Sin / Cos, rounded to fp16) gives the
    model's table exactly, at a length it was not traced with."""
    import warnings

    import onnxruntime as ort
    from workbench.models.whisper_ctc import whisper_sinusoids

    class Table(torch.nn.Module):
        def forward(self, x):
            return whisper_sinusoids(x.shape[-1], 384)

    path = tmp_path / "table.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(Table(), (torch.zeros(1, 10),), str(path), dynamo=False,
                          opset_version=17, input_names=["x"], output_names=["t"],
                          dynamic_axes={"x": {1: "n"}})
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = sess.run(None, {"x": np.zeros((1, 1500), np.float32)})[0]
    assert np.array_equal(got, whisper_sinusoids(1500, 384).numpy())
