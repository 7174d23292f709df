"""Chunked inference (workbench.streaming): exactness against the full model, and the ONNX step."""
from __future__ import annotations

import pytest
import torch

from workbench.models.whisper_ctc import WhisperCTC, WhisperCTCConfig
from workbench.streaming.step import (StreamConfig, StreamingError, StreamingStep, n_steps,
                                      stream_logits)


def tiny(seed: int = 0) -> WhisperCTC:
    torch.manual_seed(seed)
    model = WhisperCTC(WhisperCTCConfig(n_mels=80, d_model=32, n_heads=2, n_layers=2, d_ff=64,
                                        n_ctx=400, head_dim=16)).eval()
    with torch.no_grad():  # the fresh head is near zero: give it weights that matter
        for p in model.ctc_head.parameters():
            p.normal_(0, 0.3)
    return model


def batch(lengths=(157, 90, 41), seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    feats = torch.randn(len(lengths), 80, max(lengths), generator=g)
    lens = torch.tensor(lengths)
    for i, n in enumerate(lengths):
        feats[i, :, n:] = 0
    return feats, lens


def test_one_chunk_covering_the_utterance_equals_the_full_model() -> None:
    model = tiny()
    feats, lens = batch()
    full, out_lens = model(feats, lens)
    step = StreamingStep(model, StreamConfig(chunk=100, lookahead=0, left=100))
    logits, t_len = stream_logits(step, feats, lens)
    assert torch.equal(t_len, out_lens)
    for i, n in enumerate(out_lens.tolist()):
        got = logits[i, :n].log_softmax(-1)
        assert (got - full[i, :n]).abs().max() < 1e-4


def test_one_layer_chunks_with_lookahead_and_left_context_covering_all_equal_full() -> None:
    # Chunk 10 with look-ahead and left context >= the utterance: every query sees exactly the
    # keys the full model sees. With one block this is exact (with more blocks, look-ahead frames
    # of later layers are computed from this chunk's view), so it checks the caches' bookkeeping.
    model = tiny()
    model.blocks = model.blocks[:1]
    feats, lens = batch((157, 60))
    full, out_lens = model(feats, lens)
    logits, _ = stream_logits(StreamingStep(model, StreamConfig(10, 90, 90)), feats, lens)
    for i, n in enumerate(out_lens.tolist()):
        assert (logits[i, :n].log_softmax(-1) - full[i, :n]).abs().max() < 1e-4


def test_batched_chunking_equals_each_utterance_alone() -> None:
    model = tiny()
    feats, lens = batch()
    step = StreamingStep(model, StreamConfig(chunk=12, lookahead=3, left=20))
    together, t_len = stream_logits(step, feats, lens)
    for i, n in enumerate(lens.tolist()):
        alone, _ = stream_logits(step, feats[i:i + 1, :, :n], lens[i:i + 1])
        m = int(t_len[i])
        assert (alone[0, :m] - together[i, :m]).abs().max() < 1e-4


def test_output_does_not_depend_on_audio_beyond_the_lookahead() -> None:
    model = tiny()
    feats, lens = batch((150,))
    cfg = StreamConfig(chunk=10, lookahead=4, left=30)
    step = StreamingStep(model, cfg)
    a, _ = stream_logits(step, feats, lens)
    changed = feats.clone()
    # chunk 1 (frames 10..19) reads mel [18, 50): change everything from mel frame 50 on
    changed[:, :, 2 * (20 + cfg.lookahead) + 2:] += 5.0
    b, _ = stream_logits(step, changed, lens)
    # frames of the first two chunks minus the head's 2-frame look-ahead are unaffected
    assert (a[0, :20 - 2] - b[0, :20 - 2]).abs().max() == 0
    assert (a[0, 40:] - b[0, 40:]).abs().max() > 0


def test_n_steps_covers_the_head_delay() -> None:
    assert n_steps(10, 10) == 2 and n_steps(8, 10) == 1 and n_steps(9, 10) == 2


@pytest.mark.parametrize("kwargs, field", [({"chunk": 2}, "chunk"),
                                           ({"chunk": 10, "lookahead": -1}, "lookahead"),
                                           ({"chunk": 10, "left": -5}, "left")])
def test_bad_stream_config_is_refused_with_the_field(kwargs, field) -> None:
    with pytest.raises(StreamingError, match=field):
        StreamConfig(**kwargs)


def test_a_model_without_the_whisper_structure_is_refused() -> None:
    with pytest.raises(StreamingError, match="Whisper-CTC family"):
        StreamingStep(torch.nn.Linear(2, 2), StreamConfig())


def test_onnx_step_chunk_by_chunk_equals_the_simulation(tmp_path) -> None:
    pytest.importorskip("onnxruntime")
    from workbench.decode import greedy_decode
    from workbench.streaming.onnx_step import export_step, run_onnx_stream

    model = tiny()
    cfg = StreamConfig(chunk=12, lookahead=3, left=20)
    path = export_step(model, cfg, tmp_path / "step.onnx")
    feats, lens = batch((157,))
    ref, t_len = stream_logits(StreamingStep(model, cfg), feats, lens)
    got, step_ms = run_onnx_stream(path, cfg, feats[0])
    assert got.shape == ref[0].shape and (got - ref[0]).abs().max() <= 1e-3
    assert greedy_decode(got[None], t_len) == greedy_decode(ref, t_len)
    assert len(step_ms) == n_steps(int(t_len), cfg.chunk) and min(step_ms) >= 0


def test_onnx_step_times_on_the_toolbox_clock(tmp_path, monkeypatch) -> None:
    """Each chunk step is timed by the ONNX toolbox's one clock (onnx_tools.runtime.timed_run:
    wall time), not a clock of its own: with the toolbox's perf_counter advancing exactly 2 ms
    per reading, every step reads 2 ms (the real ORT runs happen in between)."""
    pytest.importorskip("onnxruntime")
    import itertools

    from workbench.onnx_tools import runtime
    from workbench.streaming.onnx_step import export_step, ort_session, run_onnx_stream

    model = tiny()
    cfg = StreamConfig(chunk=12, lookahead=3, left=20)
    session = ort_session(export_step(model, cfg, tmp_path / "step.onnx"))
    ticks = itertools.count()
    monkeypatch.setattr(runtime.time, "perf_counter", lambda: 0.002 * next(ticks))
    _, step_ms = run_onnx_stream(session, cfg, batch((90,))[0][0])
    assert step_ms and step_ms == pytest.approx([2.0] * len(step_ms))
    assert "wall time" in runtime.WALL


def test_streaming_table_reports_every_chunk_and_device() -> None:
    from workbench.evaluate import EvalSet
    from workbench.streaming.report import cache_bytes, streaming_table

    model = tiny()
    feats, lens = batch((157, 90))
    es = EvalSet("t", None, ("a", "b"), ("a tone", "a tone"),
                 tuple(feats[i, :, :n] for i, n in enumerate(lens.tolist())))
    rows = streaming_table(model, es, (0.5, 1.0, None), progress=False)
    assert [r.chunk_s for r in rows] == [0.5, 1.0, None]
    for r in rows:
        assert set(r.first_partial_ms) == set(r.compute_ms) and len(r.compute_ms) == 2
        assert all(r.first_partial_ms[d] > r.compute_ms[d] > 0 for d in r.compute_ms)
    assert rows[0].algorithmic_ms == pytest.approx(520.0)
    assert rows[0].cache_bytes == cache_bytes(model, StreamConfig.from_seconds(0.5, 0, 4.0)) > 0
    # a larger chunk costs more per step on every device
    assert all(rows[1].compute_ms[d] > rows[0].compute_ms[d] for d in rows[0].compute_ms)


def _optimized_nodes(path, tmp_path) -> int:
    import onnx
    import onnxruntime as ort
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.optimized_model_filepath = str(tmp_path / f"{path.stem}.opt.onnx")
    opts.log_severity_level = 3
    ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    return len(onnx.load(opts.optimized_model_filepath).graph.node)


@pytest.mark.parametrize("layers", [2, 3])
def test_step_extra_node_count_is_what_the_onnx_runtime_graphs_show(layers: int, tmp_path) -> None:
    pytest.importorskip("onnxruntime")
    from workbench.onnx_tools.exporter import export_fp32, to_bytes
    from workbench.streaming.onnx_step import export_step
    from workbench.streaming.report import STEP_NODES_FIXED, STEP_NODES_PER_BLOCK

    torch.manual_seed(0)
    model = WhisperCTC(WhisperCTCConfig(n_mels=80, d_model=32, n_heads=2, n_layers=layers,
                                        d_ff=64, n_ctx=400, head_dim=16)).eval()
    step = export_step(model, StreamConfig(chunk=12, lookahead=3, left=20), tmp_path / "step.onnx")
    full = tmp_path / "full.onnx"
    full.write_bytes(to_bytes(export_fp32(model, example_frames=100)))
    extra = _optimized_nodes(step, tmp_path) - _optimized_nodes(full, tmp_path)
    assert extra == STEP_NODES_PER_BLOCK * layers + STEP_NODES_FIXED


def test_step_cost_adds_the_cache_copies_to_the_compute() -> None:
    from workbench.latency import load_device
    from workbench.streaming.report import StepCost, cache_bytes, step_cost

    model = tiny()
    cost = step_cost(model, "host")
    assert (cost.blocks, cost.kv_width, cost.head_width) == (2, 32, model.ctc_head.proj_in.out_features)
    assert cost.elem_ms > 0 and cost.node_ms > 0
    q, left = 50, 200
    assert cost.step_ms(q, left + q) == pytest.approx(cost.compute_ms(q, left + q)
                                                      + cost.cache_ms(q, left + q))
    # the state moved is the state carried between steps (cache_bytes counts it separately:
    # K/V of the left context, the head's 4 frames, plus 2 mel frames the step does not copy),
    # read and written once per step
    for n in (left, left + 1):
        carried = cache_bytes(model, StreamConfig(chunk=q, lookahead=0, left=n)) // 4
        assert cost.copy_elems(q, n + q) == 2 * (carried - 2 * model.config.n_mels)
    assert cost.cache_ms(q, left + 1 + q) > cost.cache_ms(q, left + q) > 0
    # one more cached frame costs its bytes, in and out, at the device file's memory bandwidth
    prof = load_device("host")
    grown = (cache_bytes(model, StreamConfig(chunk=q, lookahead=0, left=left + 1))
             - cache_bytes(model, StreamConfig(chunk=q, lookahead=0, left=left)))
    assert cost.cache_ms(q, left + 1 + q) - cost.cache_ms(q, left + q) == pytest.approx(
        2 * grown / (prof.memory_bandwidth_gbs * 1e9 * prof.efficiency.memory) * 1e3, rel=1e-9)
    # no cache geometry, no cache cost; the full-context time has no cache either
    bare = StepCost("host", 1.0, 0.1, 0.001, 50.0)
    assert bare.step_ms(q, left + q) == bare.compute_ms(q, left + q)
    assert cost.full_ms(300) == cost.compute_ms(300, 300)
