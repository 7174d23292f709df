"""`workbench bench streaming --json`: WER vs chunk size, first-partial latency on Pi 4 / Pi 5,
the streaming ONNX step's parity with the chunked simulation and its measured vs predicted
per-chunk latency on this host."""
from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from workbench.decode import greedy_decode
from workbench.latency import load_device
from workbench.onnx_tools.runtime import WALL


def onnx_parity(model, eval_set, cfg, path: Path, limit: int = 24) -> dict:
    """ORT chunk by chunk vs the PyTorch chunked simulation on the first `limit` utterances."""
    from workbench.streaming.onnx_step import ort_session, run_onnx_stream
    from workbench.streaming.step import StreamingStep, stream_logits

    step = StreamingStep(model, cfg).eval()
    sess = ort_session(path, threads=1)
    max_diff, same, times = 0.0, 0, []
    n = min(limit, len(eval_set))
    for i in range(n):
        f = eval_set.features[i]
        ref, t_len = stream_logits(step, f[None], torch.tensor([f.shape[-1]]))
        got, step_ms = run_onnx_stream(sess, cfg, f)
        max_diff = max(max_diff, float((got - ref[0]).abs().max()))
        a = greedy_decode(got[None].log_softmax(-1), t_len)
        b = greedy_decode(ref.log_softmax(-1), t_len)
        same += a == b
        times += step_ms[1:]  # the first step of an utterance warms caches
    return {"utterances": n, "max_abs_logit_diff": max_diff, "identical_transcripts": f"{same}/{n}",
            "all_transcripts_identical": same == n, "step_ms": times}


def bench_streaming(args=None) -> dict:
    from workbench.evaluate import load_eval_set  # looked up per call: tests monkeypatch it
    from workbench.models import load_demo  # looked up per call: tests monkeypatch it
    from workbench.paths import REAL_TEST  # looked up per call: tests monkeypatch it
    from workbench.streaming.onnx_step import export_step
    from workbench.streaming.report import cache_bytes, rows_to_dicts, step_cost, streaming_table
    from workbench.streaming.step import StreamConfig

    torch.set_num_threads(2)
    t0 = time.perf_counter()
    model = load_demo()
    eval_set = load_eval_set(REAL_TEST, progress=False)
    t = time.perf_counter()
    rows = streaming_table(model, eval_set, (0.5, 1.0, 2.0, 4.0, None), lookahead_s=0.0,
                           left_s=4.0, progress=False)
    table_s = time.perf_counter() - t
    print(f"bench streaming: WER vs chunk in {table_s:.1f} s", file=sys.stderr)
    cfg = StreamConfig.from_seconds(1.0, 0.0, 4.0)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "step.onnx"
        t = time.perf_counter()
        export_step(model, cfg, path)
        export_s = time.perf_counter() - t
        t, load_before = time.perf_counter(), os.getloadavg()[0]
        parity = onnx_parity(model, eval_set, cfg, path)
        parity_s, load_after = time.perf_counter() - t, os.getloadavg()[0]
        size_mb = path.stat().st_size / 1e6
    measured = statistics.median(parity.pop("step_ms"))
    host_profile = load_device("host")
    host = step_cost(model, "host")
    q = cfg.chunk + cfg.lookahead
    predicted = host.step_ms(q, cfg.left + q)
    cache_part = host.cache_ms(q, cfg.left + q)
    err = (predicted - measured) / measured
    return {
        "wer_vs_chunk": rows_to_dicts(rows),
        "eval_set": f"data/real_test ({len(eval_set)} utterances, {eval_set.seconds:.0f} s)",
        "onnx_step": {"chunk_s": cfg.chunk_s, "lookahead_s": cfg.lookahead_s,
                      "left_s": cfg.left / 50, "file_mb": round(size_mb, 2),
                      "cache_bytes": cache_bytes(model, cfg), **parity,
                      "max_abs_logit_diff": float(f"{parity['max_abs_logit_diff']:.3g}"),
                      "parity_ok": parity["max_abs_logit_diff"] <= 1e-3
                      and parity["all_transcripts_identical"]},
        "host_step_latency": {
            "measured_ms": round(measured, 3),
            "predicted_ms": round(predicted, 3),
            "predicted_compute_ms": round(predicted - cache_part, 3),
            "predicted_cache_ms": round(cache_part, 3),
            "error_pct_without_cache_ops": round(100 * (predicted - cache_part - measured)
                                                 / measured, 1),
            "error_pct": round(100 * err, 1), "within_15pct": abs(err) <= 0.15,
            "host_profile_calibrated": bool(host_profile.calibrated),
            "host_profile_band_pct": host_profile.error_band_pct,
            "note": "run `workbench calibrate` first: an uncalibrated host profile is a nominal "
                    "guess (band +-50 %); the 15 % check is meant for the calibrated one",
            "clock": f"{WALL} per chunk step (workbench.onnx_tools.runtime.timed_run), "
                     f"median over the steps after the first of each utterance",
            "load_average_1min_before_after": [round(load_before, 2), round(load_after, 2)],
            "how": "measured: median wall ms of InferenceSession.run per chunk step on the ONNX "
                   "toolbox's clock (1 intra-op thread, steps after the first of each "
                   "utterance); predicted: "
                   "the host profile of the latency model, a + b q + c q k fitted to "
                   "predict_latency at 1, 3, 6 s (q = chunk + look-ahead, k = left + q frames), "
                   "plus the step's cache copies and extra nodes (streaming.report.StepCost)"},
        "seconds": {"wer_vs_chunk": round(table_s, 1), "export": round(export_s, 1),
                    "parity": round(parity_s, 1), "total": round(time.perf_counter() - t0, 1)},
        "latency_source": "simulated: workbench.latency predict_latency (device profiles), band "
                          "per device in band_pct; WER measured (greedy CTC, jiwer)",
        "threads": torch.get_num_threads(),
    }
