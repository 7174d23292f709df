"""workbench.byo.adapt: foreign encoders behind the model contract, pruned by one plan.

Parameter counts are hand-computed from the configs; `size()` must agree with what
`compress()` builds and with the ONNX initializers (2 %)."""
import io

import numpy as np
import pytest
import torch
from torch import nn

from toys import torchaudio_conformer, torchaudio_wav2vec2
from workbench import compress, size
from workbench.byo import adapt
from workbench.errors import ArgumentError, PlanError
from workbench.models import VOCAB, module_roles
from workbench.plan import CompressionPlan, LayerConfig, PruneConfig

D, H, FF, K = 80, 4, 256, 31


def _prune(structure: str, amount: float) -> LayerConfig:
    return LayerConfig(prune=PruneConfig(structure=structure, amount=amount))


PLAN = (CompressionPlan().with_group("ffn", _prune("neurons", 0.5))
        .with_group("attention", _prune("heads", 0.25))
        .with_group("conv", _prune("channels", 0.25)))


@pytest.fixture(scope="module")
def conformer():
    raw = torchaudio_conformer(D, H, FF, 2, K)
    return raw, adapt(raw)


@pytest.fixture(scope="module")
def wav2vec2():
    raw = torchaudio_wav2vec2(aux_num_out=len(VOCAB))
    return raw, adapt(raw)


def test_adapted_conformer_equals_the_original_and_caches_by_block(conformer):
    raw, model = conformer
    x, lengths = torch.randn(2, D, 60), torch.tensor([60, 45])
    with torch.no_grad():
        ref = raw(x.transpose(1, 2), lengths)[0]
        h, _ = model.encode_until(x, lengths, 2)
        assert torch.equal(h, ref)
        logp, out_len = model(x, lengths)
        again, _ = model.forward_from(*model.encode_until(x, lengths, 1), 1)
    assert logp.shape == (2, 60, len(VOCAB)) and torch.equal(out_len, lengths)
    assert torch.equal(logp, again)
    assert model.config.untrained and model.config.features == "log_mel"
    assert {"attention", "ffn", "conv", "norm", "head"} <= set(module_roles(model).values())
    assert sum(p.numel() for p in model.parameters()) == (
        sum(p.numel() for p in raw.parameters()) + D * len(VOCAB) + len(VOCAB))


def test_adapted_wav2vec2_equals_the_original(wav2vec2):
    raw, model = wav2vec2
    wave, lengths = torch.randn(2, 1, 3200), torch.tensor([3200, 2500])
    with torch.no_grad():
        logp, out_len = model(wave, lengths)
        ref, ref_len = raw(wave[:, 0], lengths)
    assert torch.equal(out_len, ref_len)
    assert torch.allclose(logp, ref.log_softmax(-1), atol=1e-6)
    assert not model.config.untrained  # its aux layer already has the vocabulary's size


def test_one_plan_prunes_heads_neurons_channels_with_exact_counts(conformer):
    raw, model = conformer
    before = {k: v.clone() for k, v in raw.state_dict().items()}
    report = size(model, PLAN)
    pruned = compress(model, PLAN)
    dh, n, h, c = D // H, 128, 1, 20  # round-half-up of 50 % of 256, 25 % of 4, 25 % of 80
    per_layer = (2 * (n * (D + 1) + n * D) + 3 * h * dh * (D + 1) + h * dh * D
                 + 2 * c * (D + 1) + c * (K + 1) + 2 * c + c * D)
    expected = sum(p.numel() for p in model.parameters()) - 2 * per_layer
    assert sum(p.numel() for p in pruned.parameters()) == expected == report.params
    assert all(torch.equal(before[k], v) for k, v in raw.state_dict().items())
    x, lengths = model.example_input()
    with torch.no_grad():
        assert pruned(x, lengths)[0].shape == model(x, lengths)[0].shape


def test_size_matches_onnx_initializers_and_ort_matches_pytorch(conformer):
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    _, model = conformer
    pruned = compress(model, PLAN)
    example = model.example_input()
    buf = io.BytesIO()
    torch.onnx.export(pruned, example, buf, dynamo=False, opset_version=17,
                      input_names=["features", "lengths"])
    graph = onnx.load_from_string(buf.getvalue()).graph
    init_bytes = sum(int(np.prod(t.dims)) * 4 for t in graph.initializer)
    assert abs(size(model, PLAN).total_bytes - init_bytes) / init_bytes < 0.02
    session = ort.InferenceSession(buf.getvalue(), providers=["CPUExecutionProvider"])
    got = session.run(None, {"features": example[0].numpy(), "lengths": example[1].numpy()})[0]
    with torch.no_grad():
        ref = pruned(*example)[0].numpy()
    assert np.abs(got - ref).max() < 1e-4


def test_zero_plan_is_bit_identical(conformer):
    _, model = conformer
    zero = (CompressionPlan().with_group("ffn", _prune("neurons", 0.0))
            .with_group("attention", _prune("heads", 0.0)))
    x, lengths = model.example_input()
    with torch.no_grad():
        assert torch.equal(compress(model, zero)(x, lengths)[0], model(x, lengths)[0])


def test_wav2vec2_size_counts_the_weight_norm_conv_and_matches_compress(wav2vec2):
    _, model = wav2vec2
    report = size(model, CompressionPlan())
    assert report.params == sum(p.numel() for p in model.parameters())  # was KeyError 'weight'
    plan = (CompressionPlan().with_group("ffn", _prune("neurons", 0.5))
            .with_group("attention", _prune("heads", 0.25)))
    pruned = compress(model, plan)
    dh = 128 // 4
    per_layer = 128 * (128 + 1) + 128 * 128 + 3 * dh * (128 + 1) + dh * 128
    assert size(model, plan).params == sum(p.numel() for p in pruned.parameters()) == (
        report.params - 2 * per_layer)


def test_taylor_on_a_graph_group_without_its_gradients_is_refused(conformer):
    _, model = conformer
    plan = CompressionPlan().with_group(
        "ffn", LayerConfig(prune=PruneConfig(structure="neurons", amount=0.5,
                                             importance="taylor")))
    # gradients given but not for this group's weights (tests/test_graph_taylor.py: with them)
    with pytest.raises(PlanError, match="no gradient for blocks.0.block.ffn1"):
        compress(model, plan, grads={})


class _Plain(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.ModuleList([nn.Linear(8, 8)])


def test_unknown_model_lists_what_is_missing():
    with pytest.raises(ArgumentError, match=r"_Plain.*stem=.*blocks=.*d_model="):
        adapt(_Plain())


def test_custom_adapter_with_a_wrong_blocks_path():
    with pytest.raises(ArgumentError, match="blocks='nope'"):
        adapt(_Plain(), stem=lambda m, f, n: (f.transpose(1, 2), n), blocks="nope", d_model=8)


def test_not_a_model_and_other_vocabulary_are_refused():
    with pytest.raises(ArgumentError, match="nn.Module"):
        adapt("conformer")
    with pytest.raises(ArgumentError, match="VOCAB"):
        adapt(_Plain(), vocab=["a", "b"])


def test_custom_adapter_runs(conformer):
    raw, _ = conformer
    model = adapt(raw, stem=lambda m, f, n: (f.transpose(1, 2), n), blocks="conformer_layers",
                  d_model=D, block_call=lambda b, h, m: b(h.transpose(0, 1), m).transpose(0, 1))
    x, lengths = torch.randn(1, D, 30), torch.tensor([30])
    with torch.no_grad():
        assert torch.equal(model.encode_until(x, lengths, 2)[0],
                           raw(x.transpose(1, 2), lengths)[0])


def test_the_callers_model_and_head_are_never_changed(conformer, wav2vec2):
    """adapt() and the public AdaptedCTC constructor work on a private copy: the caller's block
    list is not emptied, their CTC head is not switched to eval nor shared."""
    from workbench.byo import AdaptedConfig, AdaptedCTC
    raw, _ = conformer
    head = nn.Linear(D, len(VOCAB)).train()
    before = {k: v.clone() for k, v in head.state_dict().items()}
    model = adapt(raw, ctc_head=head)
    assert head.training and model.ctc is not head
    with torch.no_grad():
        model.ctc.weight.add_(1.0)  # training the adapted head leaves the caller's alone
    assert all(torch.equal(v, before[k]) for k, v in head.state_dict().items())
    layers = len(raw.conformer_layers)
    config = AdaptedConfig("test", "log_mel", D, D, layers, len(VOCAB), False)
    direct = AdaptedCTC(raw, config, lambda m, f, n: (f.transpose(1, 2), n),
                        list(raw.conformer_layers), lambda b, h, m: b(h, m), head, ())
    assert len(raw.conformer_layers) == layers and len(direct.blocks) == layers
    assert not any(p is q for p in direct.parameters() for q in raw.parameters())
    raw_w2v, _ = wav2vec2
    assert isinstance(raw_w2v.aux, nn.Linear)  # its output layer moved out of the copy only
