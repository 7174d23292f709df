"""Run and time exported models in ONNX Runtime (CPU execution provider).

One timing harness and one clock for every ORT latency the workbench reports or fits on (the
export report, `workbench bench export`, the host latency calibration, `workbench bench latency`),
and for the ExecuTorch export's .pte (its session has ORT's run signature):

    CLOCK: wall time (time.perf_counter) of one InferenceSession.run on a fixed input, median
    over `repeats` interleaved rounds after `warmup` runs of every job.

Why wall time: it is what a user of the model waits for, and the only clock that is right at any
thread count (the calling thread's CPU time leaves out ORT's worker threads). Why interleaved:
each round runs every job once, so a burst of load from other processes on a shared machine
spreads over all jobs instead of spoiling one job's repeats; the 1-minute load average before and
after is returned with the times (a busy machine inflates every wall time: read them with it).

The fixed input: standard-normal features (seeded) of the given length; dense kernels take the
same time for any values (an all-zero input would give DynamicQuantizeLinear an empty range).
"""
from __future__ import annotations

import os
import statistics
import tempfile
import time
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from workbench.features import FRAMES_PER_SECOND
from workbench.onnx_tools.graph_map import op_counts

if TYPE_CHECKING:
    import onnxruntime

#: The clock of every ORT time the workbench reports: one run, timed by `timed_run`.
WALL = "wall time (time.perf_counter) of InferenceSession.run"
#: The clock and harness of the whole-model times (stated in each JSON that holds one).
CLOCK = f"{WALL}, median of interleaved rounds after warm-up runs (workbench.onnx_tools.runtime)"

#: An exported model: serialized bytes or a file.
ModelSource = bytes | str | Path


def make_session(model: ModelSource, threads: int = 1, optimized_path: str | None = None
                 ) -> onnxruntime.InferenceSession:
    """A CPU session with `threads` intra-op threads, sequential, all graph optimisations
    (the graph the latency model prices: after ORT's fusions)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    if optimized_path is not None:
        opts.optimized_model_filepath = optimized_path
    source = str(model) if isinstance(model, Path) else model
    return ort.InferenceSession(source, opts, providers=["CPUExecutionProvider"])


def feature_feeds(features: torch.Tensor) -> dict[str, np.ndarray]:
    """ORT inputs for one (n_mels, T) utterance."""
    return {"features": features[None].numpy().astype(np.float32),
            "feat_lengths": np.array([features.shape[-1]], dtype=np.int64)}


def runtime_op_counts(model: ModelSource) -> dict[str, int]:
    """Op counts of the graph ORT actually runs (after its fusions, e.g. DynamicQuantizeMatMul)."""
    import onnx

    with tempfile.TemporaryDirectory(prefix="workbench-ort-") as tmp:
        path = f"{tmp}/optimized.onnx"
        make_session(model, 1, optimized_path=path)
        return op_counts(onnx.load(path))


def timed_run(session: onnxruntime.InferenceSession, feeds: Mapping[str, Any]
              ) -> tuple[list[Any], float]:
    """One `session.run(None, feeds)` on the workbench's clock (WALL): (outputs, ms). Every ORT
    time goes through here: the interleaved harness below, and the streaming step's per-chunk
    times (workbench.streaming.onnx_step), which feed each output back into the next run."""
    start = time.perf_counter()
    outputs = session.run(None, dict(feeds))
    return outputs, (time.perf_counter() - start) * 1e3


@dataclass(frozen=True)
class Timing:
    """One job's times in ms on CLOCK: the median (the figure) and the fastest run."""

    ms: float
    min_ms: float
    runs: int


@dataclass(frozen=True)
class Timings:
    """Times per job key, with the 1-minute load average before and after the measurement."""

    by_job: dict[Hashable, Timing]
    load_before: float
    load_after: float
    clock: str = CLOCK


def _load() -> float:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return float("nan")


def time_interleaved(jobs: Sequence[tuple[Hashable, Any, float]], threads: int = 1,
                     repeats: int = 7, warmup: int = 2, n_mels: int = 80,
                     rate: int = FRAMES_PER_SECOND,
                     make: Callable[[Any, int], Any] = make_session) -> Timings:
    """Time every job (key, model, audio seconds) on CLOCK: `warmup` runs each, then `repeats`
    rounds that run every job once. One session per distinct model, `make(model, threads)`:
    ONNX Runtime by default; any object with ORT's `run(None, feeds)` works (the ExecuTorch
    export's PteSession). Inputs: (n_mels, seconds x rate) - log-mel at 100 frames/s, or (1,
    samples) at 16 kHz for a waveform model."""
    sessions: dict[Any, Any] = {}
    feeds: dict[Hashable, dict[str, np.ndarray]] = {}
    gen = torch.Generator().manual_seed(0)
    for key, model, seconds in jobs:
        if id(model) not in sessions:
            sessions[id(model)] = make(model, threads)
        frames = int(round(seconds * rate))
        feeds[key] = feature_feeds(torch.randn(n_mels, frames, generator=gen))
    before = _load()
    for key, model, _ in jobs:
        for _ in range(warmup):
            sessions[id(model)].run(None, feeds[key])
    times: dict[Hashable, list[float]] = {key: [] for key, _, _ in jobs}
    for _ in range(repeats):
        for key, model, _ in jobs:
            times[key].append(timed_run(sessions[id(model)], feeds[key])[1])
    return Timings({key: Timing(statistics.median(t), min(t), len(t)) for key, t in times.items()},
                   before, _load())


def latency_ms(models: Mapping[str, ModelSource], threads: int = 1, seconds: float = 5.0,
               repeats: int = 15, warmup: int = 3, n_mels: int = 80,
               rate: int = FRAMES_PER_SECOND) -> dict[str, float]:
    """Median run time (ms, CLOCK) of each model on one `seconds` input, measured in turns."""
    timings = time_interleaved([(name, m, seconds) for name, m in models.items()], threads,
                               repeats, warmup, n_mels, rate)
    return {name: round(timings.by_job[name].ms, 3) for name in models}
