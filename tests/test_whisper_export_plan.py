"""Per-layer bits in the full-Whisper export (tiny random model): each plan layer's weight nodes
are found in the graphs that run it (self- and cross-attention told apart), quantized as the
plan says, the rest left fp32; ORT follows the simulation; report.json and MODEL_CARD.md are
written with the CTC card's sections."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from toys import Letters, tiny_whisper_asr
from workbench.evaluate import EvalSet
from workbench.plan import CompressionPlan, LayerConfig, PruneConfig, QuantConfig

torch.set_num_threads(1)
pytest.importorskip("onnxruntime")


_Letters = Letters


@pytest.fixture(scope="module")
def model():
    return tiny_whisper_asr(n_ctx=1500)


def _plan():
    q = lambda b: LayerConfig(quant=QuantConfig(weight_bits=b))  # noqa: E731
    return (CompressionPlan()
            .with_layer("encoder.blocks.0.mlp.fc1", q(8))
            .with_layer("decoder.blocks.0.cross_attn.q_proj", q(4))
            .with_layer("decoder.blocks.1.cross_attn.k_proj", q(8))
            .with_layer("decoder.blocks.1.attn.out_proj", q(6))            # runs as 8 bit
            .with_layer("decoder.token_embedding", q(8))
            .with_layer("decoder.blocks.1.mlp", LayerConfig(prune=PruneConfig(
                structure="neurons", amount=0.5))))


@pytest.fixture(scope="module")
def built(model, tmp_path_factory):
    from workbench.export.whisper_apply import build_whisper_export
    return build_whisper_export(model, _plan(), tmp_path_factory.mktemp("wx"))


def _ops(path: Path) -> dict[str, int]:
    import onnx
    from collections import Counter
    return dict(Counter(n.op_type for n in onnx.load(str(path)).graph.node))


def test_each_plan_layer_runs_as_planned_in_the_graphs_that_have_it(built):
    d = {x.path: x for x in built["decisions"]}
    assert d["encoder.blocks.0.mlp.fc1"].method == "int8_dynamic"
    assert d["decoder.blocks.0.cross_attn.q_proj"].method == "nbits"
    assert d["decoder.blocks.1.attn.out_proj"].bits == 8 and d[
        "decoder.blocks.1.attn.out_proj"].changes                    # 6 -> 8, reported
    nodes = built["layer_nodes"]
    # cross keys are computed once, in cross_kv; the decoder receives them as inputs
    assert {n.split(":")[0] for n in nodes["decoder.blocks.1.cross_attn.k_proj"]} == {
        "cross_kv"}
    assert {n.split(":")[0] for n in nodes["decoder.blocks.0.cross_attn.q_proj"]} == {
        "decoder"}
    # quantized nodes per graph: exactly the plan's layers that run there
    assert _ops(built["model"]["encoder"]).get("MatMulInteger") == 1           # enc fc1
    assert "MatMulNBits" not in _ops(built["model"]["encoder"])
    dec, cross = _ops(built["model"]["decoder"]), _ops(built["model"]["cross_kv"])
    assert dec.get("MatMulNBits") == 1                                         # cross q_proj
    assert dec.get("MatMulInteger") == 2      # attn.out_proj (6 -> 8 bit) + tied projection
    assert cross.get("MatMulInteger") == 1 and cross["MatMul"] == 3           # cross k_proj
    # the fp32 MatMuls left are the unplanned layers and the attention products
    fp32 = _ops(built["fp32"]["decoder"])["MatMul"]
    assert dec["MatMul"] == fp32 - 3


def test_pruned_structure_is_exported(built):
    import onnx
    from onnx import numpy_helper
    proto = onnx.load(str(built["fp32"]["decoder"]))
    shapes = [numpy_helper.to_array(i).shape for i in proto.graph.initializer]
    assert (32, 32) in shapes and (32, 64) in shapes and (32, 32 * 2) in shapes
    assert built["structural"].decoder.blocks[1].mlp.fc1.out_features == 32


def test_ort_follows_the_simulation(model, tmp_path):
    """Every layer at a width ORT runs exactly (no 6 -> 8 rounding): ORT == the simulation up to
    float rounding, while the uncompressed model is visibly farther away."""
    from workbench.export.whisper_apply import build_whisper_export, parity
    from workbench.export.whisper_onnx import OrtWhisper
    plan = _plan().with_layer("decoder.blocks.1.attn.out_proj", None)
    built = build_whisper_export(model, plan, tmp_path)
    assert not any(d.changes for d in built["decisions"])
    ort_model = OrtWhisper(built["model"], model.rules, 2)
    dynamic = {d.path for d in built["decisions"] if d.dynamic_activations}
    torch.manual_seed(3)
    feats = [torch.randn(80, 57), torch.randn(80, 140)]
    p = parity(ort_model, built["sim"], feats, dynamic)
    assert p["encoder_max_abs_diff"] < 1e-3 and p["first_step_logits_max_abs_diff"] < 1e-3
    assert p["first_token_agreement"] == 1.0
    far = parity(ort_model, model, feats, set())
    assert far["first_step_logits_max_abs_diff"] > 10 * max(p["first_step_logits_max_abs_diff"],
                                                            1e-4)


def test_modules_are_told_apart_by_weight_not_node_name(model):
    from workbench.export.whisper_apply import weight_index
    idx = weight_index(model)
    paths = {p for p in idx.values() if p}
    assert {"decoder.blocks.0.attn.q_proj", "decoder.blocks.0.cross_attn.q_proj",
            "decoder.token_embedding", "encoder.conv1"} <= paths


def test_activation_quantization_is_refused(model):
    from workbench.errors import PlanError
    from workbench.export.whisper_apply import check_exportable
    plan = CompressionPlan().with_layer("decoder.blocks.0.mlp.fc1", LayerConfig(
        quant=QuantConfig(weight_bits=8, act_bits=8)))
    with pytest.raises(PlanError, match=r"act_bits 8 on \['decoder.blocks.0.mlp.fc1'\]"):
        check_exportable(model, plan)


def test_apply_writes_report_and_card(model, tmp_path):
    from workbench.export.whisper_apply import apply_whisper
    torch.manual_seed(5)
    feats = tuple(torch.randn(80, n) for n in (60, 90, 45))
    es = EvalSet("synth_test", Path("/nonexistent/m.jsonl"), ("a", "b", "c"), ("aa bb",) * 3,
                 feats)
    report = apply_whisper(model, _Letters(), _plan(), tmp_path / "out", [es],
                           parity_utterances=2, int8_weights="unsigned")
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir()) == [
        "MODEL_CARD.md", "cross_kv.onnx", "decoder.onnx", "encoder.onnx", "plan.json",
        "report.json"]
    on_disk = json.loads((out / "report.json").read_text())
    assert on_disk["accuracy"][0]["utterances"] == 3
    assert set(on_disk["rounded_up"]) == {"decoder.blocks.1.attn.out_proj"}
    assert on_disk["size"]["model_bytes"] == sum(
        (out / f"{g}.onnx").stat().st_size for g in ("encoder", "cross_kv", "decoder"))
    row = report["accuracy"][0]
    assert row["wer_abs_diff"] == pytest.approx(abs(row["wer_ort"] - row["wer_sim"]), abs=1e-4)
    card = (out / "MODEL_CARD.md").read_text()
    assert card.startswith("---\nlicense: mit") and "base_model: openai/whisper-tiny.en" in card
    for section in ("## Compression plan", "## Accuracy", "## Size and latency",
                    "## Known failure modes and limits", "MatMulNBits", "ms per token"):
        assert section in card
    # --int8-weights unsigned reaches every graph: uint8 + 128 MatMulInteger weights
    assert on_disk["int8_weights"]["storage"] == "unsigned"
    assert on_disk["int8_weights"]["reason"] in card
    import onnx
    from onnx import TensorProto
    stored = set()
    for g in ("encoder", "cross_kv", "decoder"):
        proto = onnx.load(str(out / f"{g}.onnx"))
        inits = {i.name: i.data_type for i in proto.graph.initializer}
        stored |= {inits[n.input[1]] for n in proto.graph.node
                   if n.op_type == "MatMulInteger" and n.input[1] in inits}
    assert stored == {TensorProto.UINT8}
    assert np.isfinite(report["latency_ms"]["decoder_per_token"]["model_ms"])


# ---- `workbench apply --model whisper`: refusals before any model is loaded -----------------
@pytest.mark.parametrize("extra, names", [
    (["--checkpoint", "{plan}"], "--checkpoint"),
    (["--conditions"], "--conditions"),
    (["--runtime", "executorch"], "--runtime executorch"),
])
def test_apply_whisper_cli_refuses_options_it_cannot_honour(tmp_path, capsys, extra, names):
    import signal

    from workbench.__main__ import main
    plan = tmp_path / "plan.json"
    plan.write_text(CompressionPlan().to_json())
    argv = ["apply", "--model", "whisper", "--plan", str(plan), "--out", str(tmp_path / "o"),
            *[a.format(plan=plan) for a in extra]]
    handler = signal.getsignal(signal.SIGTERM)
    try:
        code = main(argv)
    finally:
        signal.signal(signal.SIGTERM, handler)
    err = capsys.readouterr().err
    assert code == 2 and names in err and "Traceback" not in err
    assert not (tmp_path / "o").exists()


# ---- storage: every weight once, as workbench.size prices it ---------------------------------
def _size_plans():
    q = lambda b, **kw: LayerConfig(quant=QuantConfig(weight_bits=b, **kw))  # noqa: E731
    int8 = CompressionPlan().with_default(q(8))
    return {"fp32": CompressionPlan(), "int8": int8,
            "mixed": (int8.with_layer("decoder.token_embedding", q(4))
                      .with_layer("decoder.blocks.0.mlp.fc1", q(4, symmetric=False))
                      .with_layer("decoder.blocks.1.attn.q_proj", q(16))
                      .with_layer("decoder.blocks.1.mlp", LayerConfig(prune=PruneConfig(
                          structure="neurons", amount=0.5))))}


@pytest.fixture(scope="module")
def distinct(model):
    """The toy with every parameter perturbed: its all-ones norms and all-zero biases would be
    stored once by the exporter (equal constants are merged), a saving real checkpoints do not
    have, which would hide a duplicated weight."""
    import copy
    m = copy.deepcopy(model)
    torch.manual_seed(9)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    return m


@pytest.mark.parametrize("name", ["fp32", "int8", "mixed"])
def test_stored_weights_match_the_size_prediction(distinct, tmp_path, name):
    """The initializers of the three graphs hold each weight once in the plan's format, so their
    bytes equal size()'s prediction within 0.5 % (the tied embedding's table alone is 10 % of
    this toy, a second decoder copy ~40 %)."""
    import onnx
    from workbench.export.whisper_apply import build_whisper_export, stored_bytes
    from workbench.size import size
    plan = _size_plans()[name]
    built = build_whisper_export(distinct, plan, tmp_path)
    stored = stored_bytes(built["model"])
    predicted = size(distinct, plan).total_bytes
    assert abs(stored["initializers"] - predicted) <= 0.005 * predicted, (stored, predicted)
    dec = onnx.load(str(built["model"]["decoder"]))
    assert not any(list(i.dims) == [60, 32] for i in dec.graph.initializer)  # no Gather table
    assert not built["notes"]


def test_tied_embedding_reads_the_projection_weight_at_every_width(distinct, tmp_path):
    """The input embedding gathers from the projection's stored weight (int8 per channel and per
    tensor, 4-bit and 2-bit MatMulNBits, asymmetric, fp16, and the `up` factor of a low-rank
    projection): ORT's first logits equal the simulation's."""
    from workbench.export.whisper_apply import build_whisper_export, parity
    from workbench.export.whisper_onnx import OrtWhisper
    torch.manual_seed(3)
    feats = [torch.randn(80, 57)]
    for i, cfg in enumerate([QuantConfig(weight_bits=8), QuantConfig(weight_bits=4),
                             QuantConfig(weight_bits=8, granularity="per_tensor"),
                             QuantConfig(weight_bits=2), QuantConfig(weight_bits=16),
                             QuantConfig(weight_bits=4, symmetric=False), None]):
        layer = LayerConfig(quant=cfg) if cfg else LayerConfig(rank=16)
        plan = CompressionPlan().with_layer("decoder.token_embedding", layer)
        built = build_whisper_export(distinct, plan, tmp_path / str(i))
        assert not built["notes"]
        dynamic = {d.path for d in built["decisions"] if d.dynamic_activations}
        p = parity(OrtWhisper(built["model"], distinct.rules, 2), built["sim"], feats, dynamic)
        assert p["first_step_logits_max_abs_diff"] < 1e-3, (cfg, p)


def test_bench_ort_figures_use_the_per_layer_export(model):
    """`bench whisper`'s ORT figures: the int8-everywhere plan through build_whisper_export
    (three graphs, stored bytes = size()), ORT vs simulated WER per set."""
    from types import SimpleNamespace

    from workbench.bench.whisper import bench_figures
    torch.manual_seed(5)
    feats = tuple(torch.randn(80, n) for n in (60, 45))
    es = EvalSet("synth_test", Path("/nonexistent/m.jsonl"), ("a", "b"), ("aa bb",) * 2, feats)
    out = bench_figures(model, _Letters(), {"synth_test": es}, SimpleNamespace())
    assert sorted(out["bytes_int8"]) == ["cross_kv", "decoder", "encoder"]
    # the untouched toy's equal constants (all-ones norms) are merged by the exporter
    assert 0.9 < out["int8_stored"]["initializers"] / out["int8_size_prediction_bytes"] <= 1.0
    row = out["synth_test"]
    assert row["difference"] == pytest.approx(row["ort_int8_wer"] - row["simulated_int8_wer"],
                                              abs=1e-4)
    assert out["ort_int8_decoder_ms_per_token_p50"] > 0
