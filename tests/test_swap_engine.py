"""The architecture swaps on the engine's per-block path (review 7, finding 1): Session and
WhisperSession compress one block at a time, and must build exactly the model
`compress(model, plan)` builds (same weights, buffers and windows) and so the same transcripts.
Before the fix a window in seconds raised there (a block has no stem) and every block got the
same Performer features."""
from __future__ import annotations

import pytest
import torch

from toys import Letters, random_eval_set, tiny_whisper_asr
from workbench.compress import compress, compress_module
from workbench.errors import ArgumentError, PlanError
from workbench.evaluate import EvalSet, transcribe
from workbench.models import build_model
from workbench.plan import CompressionPlan, LayerConfig

torch.set_num_threads(1)

SWAPS = {
    "windowed_attention": {"window_s": 0.2},
    "linear_attention": {},
    "performer_attention": {"features": 16},
    "grouped_ffn": {"groups": 2},
}


def _same_modules(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        torch.testing.assert_close(sa[k], sb[k], rtol=0, atol=0, msg=k)
    windows = lambda m: {p: x.window for p, x in m.named_modules() if hasattr(x, "window")}  # noqa
    assert windows(a) == windows(b)


@pytest.fixture(scope="module")
def ctc():
    from workbench.engine.session import Session
    torch.manual_seed(0)
    model = build_model("whisper_ctc", d_model=32, n_heads=4, n_layers=2, d_ff=64, n_ctx=1500,
                        head_dim=16).eval()
    es = random_eval_set(5)
    return model, es, Session(model, es, quick_utterances=2, warm_svd=False)


@pytest.mark.parametrize("name", sorted(SWAPS))
def test_session_builds_and_evaluates_the_swap_as_compress_does(ctc, name) -> None:
    model, es, session = ctc
    role = "ffn" if name == "grouped_ffn" else "attention"
    plan = CompressionPlan().with_group(role, LayerConfig(**{name: SWAPS[name]}))
    reference = compress(model, plan)
    _same_modules(session.compressed_model(plan), reference)
    got = session.evaluate(plan, "full")
    assert list(got.hypotheses) == transcribe(reference, es.features)


@pytest.fixture(scope="module")
def asr():
    from workbench.engine.whisper_session import WhisperSession
    model = tiny_whisper_asr()
    feats = tuple(torch.randn(80, n, generator=torch.Generator().manual_seed(n))
                  for n in (30, 45, 22, 60))
    es = EvalSet("toy", None, tuple(f"u{i}" for i in range(4)), ("aa bb",) * 4, feats)
    return model, es, WhisperSession(model, Letters(), es, quick_utterances=2)


@pytest.mark.parametrize("name", sorted(SWAPS))
def test_whisper_session_builds_and_evaluates_the_swap_as_compress_does(asr, name) -> None:
    from workbench.data import normalize_text
    from workbench.whisper_eval import transcribe as whisper_transcribe
    model, es, session = asr
    where = "mlp" if name == "grouped_ffn" else "attn"
    plan = CompressionPlan()
    for i in range(len(model.encoder.blocks)):      # the encoder's blocks (the decoder's
        plan = plan.with_layer(f"encoder.blocks.{i}.{where}",   # attention is another class)
                               LayerConfig(**{name: SWAPS[name]}))
    reference = compress(model, plan)
    _same_modules(session.compressed_model(plan), reference)
    ref = whisper_transcribe(reference, Letters(), es.features, normalize=False)
    assert session.evaluate(plan, "full").hypotheses == tuple(normalize_text(r) for r in ref)


def test_performer_features_differ_per_block_on_both_paths(ctc) -> None:
    model, _, session = ctc
    plan = CompressionPlan().with_group("attention", LayerConfig(
        performer_attention={"features": 16}))
    for built in (compress(model, plan), session.compressed_model(plan)):
        first, second = (b.attn.projection for b in built.blocks)
        assert not torch.equal(first, second)


def test_a_window_in_seconds_on_one_block_alone_names_what_is_missing(ctc) -> None:
    model, _, _ = ctc
    entry = {"attn": LayerConfig(windowed_attention={"window_s": 0.2})}
    with pytest.raises(PlanError, match=r"layers\['attn'\].*model=\.\.\., prefix="):
        compress_module(model.blocks[0], entry)
    block = compress_module(model.blocks[0], entry, model=model, prefix="blocks.0").model
    assert block.attn.window == 10                      # 0.2 s at 50 frames per second


def test_compress_module_refuses_a_prefix_that_is_not_the_module(ctc) -> None:
    model, _, _ = ctc
    with pytest.raises(ArgumentError, match="prefix='blocks.1'"):
        compress_module(model.blocks[0], {}, model=model, prefix="blocks.1")
    with pytest.raises(ArgumentError, match="model="):
        compress_module(model.blocks[0], {}, prefix="blocks.0")


# ---- the dashboard's latency of a swap (review 7, finding 2) ----

@pytest.mark.parametrize("name", sorted(SWAPS))
@pytest.mark.parametrize("seconds", [1.0, 4.0, 8.0, 30.0])
def test_engine_latency_of_a_swap_equals_pricing_at_that_length(ctc, name, seconds) -> None:
    """CostCache keeps its structure table at 1 s; a hooked row (a 4 s window pads 1 s of
    frames to 4 s) must be priced at the length asked for, not rescaled from 1 s."""
    from workbench.engine.costs import CostCache
    from workbench.latency import layer_table, load_device, predict_latency, price_table
    from workbench.latency import table_for_plan
    model, _, _ = ctc
    setting = {"window_s": 4.0} if name == "windowed_attention" else SWAPS[name]
    role = "ffn" if name == "grouped_ffn" else "attention"
    plan = CompressionPlan().with_group(role, LayerConfig(**{name: setting}))
    got = CostCache(model).latency(plan, "host", seconds)
    at_length = price_table(table_for_plan(layer_table(model, seconds), model, plan),
                            load_device("host"))
    assert [(r.path, r.macs) for r in got.layers] == [(r.path, r.macs) for r in at_length.layers]
    assert got.total_ms == pytest.approx(at_length.total_ms, rel=1e-9)
    shape_pass = predict_latency(model, "host", seconds, plan)
    # the same rows as a shape pass of the compressed model: a grouped FFN's hook gives one
    # row per part, as the shape pass has (it gave one row for all parts, 0.39 ms less at 2 s)
    assert [(r.path, r.macs) for r in got.layers] == [(r.path, r.macs) for r in shape_pass.layers]
    assert got.total_ms == pytest.approx(shape_pass.total_ms, rel=1e-9)
