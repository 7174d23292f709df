"""Minimal ONNX export + ONNX Runtime timing, private to the latency package.

Calibration and the latency bench need real ONNX Runtime numbers; the full export (parity
report, model card, per-layer bit mapping) is `workbench.export`'s job. Here:

- `export_onnx`: torch.onnx.export(dynamo=True) of a CTC model with a dynamic time axis;
- `quantize_int8`: onnxruntime.quantization.quantize_dynamic, int8 per-channel weights, on the
  MatMul nodes of the chosen Linear layers (found through the exporter's name-scope metadata);
- `measure_ms`: median wall and thread-CPU time of InferenceSession.run, 1 thread, per length.

onnxruntime / onnx are imported inside the functions: `import workbench` must not load them.
"""
from __future__ import annotations

import ast
import copy
import logging
import statistics
import time
import warnings
from collections.abc import Collection, Hashable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from workbench.errors import WorkbenchError
from workbench.layer_profile import FEATURE_FRAMES_PER_SECOND

#: Longest input the exported graph is traced for, in mel frames (Whisper's 30 s).
MAX_FRAMES = 3000


def export_onnx(model: nn.Module, path: Path, example_seconds: float = 4.0) -> Path:
    """fp32 ONNX of a CTC model: inputs features (1, n_mels, frames), feat_lengths (1,)."""
    work = copy.deepcopy(model).eval()
    n_mels = work.config.n_mels
    frames = round(example_seconds * FEATURE_FRAMES_PER_SECOND)
    features = torch.randn(1, n_mels, frames)
    feat_lengths = torch.tensor([frames])
    dim = torch.export.Dim("frames", min=16, max=MAX_FRAMES)
    try:
        with warnings.catch_warnings(), _quiet_exporter():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                work, (features, feat_lengths), dynamo=True, verbose=False,
                dynamic_shapes=({2: dim}, None), input_names=["features", "feat_lengths"],
                output_names=["log_probs", "lengths"])
            program.save(str(path))
    except Exception as err:  # the exporter raises many types; report the first line plainly
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise WorkbenchError(f"{type(work).__name__}: torch.onnx.export(dynamo=True) failed: "
                             f"{first}") from err
    return path


class _quiet_exporter:
    """Silence the exporter's progress lines and torchvision notices (they go to stdout/logs)."""

    def __enter__(self) -> None:
        import contextlib
        import io
        self._redirect = contextlib.redirect_stdout(io.StringIO())
        self._redirect.__enter__()
        self._level = logging.getLogger("torch.onnx").level
        logging.getLogger("torch.onnx").setLevel(logging.ERROR)

    def __exit__(self, *exc: object) -> None:
        logging.getLogger("torch.onnx").setLevel(self._level)
        self._redirect.__exit__(*exc)


def matmul_nodes_by_module(onnx_path: Path) -> dict[str, str]:
    """MatMul node name -> module path of the Linear it came from (weight-initializer MatMuls)."""
    import onnx
    model = onnx.load(str(onnx_path), load_external_data=False)
    inits = {i.name for i in model.graph.initializer}
    out = {}
    for node in model.graph.node:
        if node.op_type != "MatMul" or not any(i in inits for i in node.input):
            continue
        meta = {p.key: p.value for p in node.metadata_props}
        scopes = meta.get("pkg.torch.onnx.name_scopes")
        if not scopes:
            continue
        names = ast.literal_eval(scopes)
        # [..., 'blocks.0.attn.q_proj', 'linear'] -> the last entry is the aten op's own name.
        modules = [s for s in names[:-1] if s]
        if modules:
            out[node.name] = modules[-1]
    return out


def op_counts(onnx_path: Path) -> dict[str, int]:
    """How many nodes of each op type the ONNX file holds (before ONNX Runtime's fusions)."""
    import onnx
    counts: dict[str, int] = {}
    for node in onnx.load(str(onnx_path), load_external_data=False).graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts


def quantize_int8(src: Path, dst: Path, module_paths: Collection[str] | None = None) -> Path:
    """Dynamic int8 (per-channel weights) on the MatMuls of `module_paths` (None: every Linear).

    A path also covers the layers under it (a low-rank Linear's two factors).
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic

    nodes = matmul_nodes_by_module(src)
    if module_paths is not None:
        wanted = tuple(module_paths)
        chosen = [n for n, p in nodes.items()
                  if any(p == w or p.startswith(w + ".") for w in wanted)]
    else:
        chosen = list(nodes)
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # quantize_dynamic warns about pre-processing on the root logger
    try:
        quantize_dynamic(str(src), str(dst), op_types_to_quantize=["MatMul"], per_channel=True,
                         weight_type=QuantType.QInt8, nodes_to_quantize=chosen,
                         extra_options={"MatMulConstBOnly": True})
    finally:
        root.setLevel(level)
    return dst


def session(path: Path):
    """A 1-thread CPU InferenceSession with all graph optimisations (what we model)."""
    import onnxruntime as ort
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


@dataclass(frozen=True)
class Timing:
    """Median over repeats of one InferenceSession.run, in milliseconds.

    cpu_ms is the calling thread's CPU time: with intra_op_num_threads=1 ONNX Runtime computes on
    the calling thread, so on an idle machine cpu_ms equals wall_ms, and on a shared machine it
    leaves out the time the thread waited for a core (wall time then says more about the other
    processes than about the model). Calibration and the bench use cpu_ms.
    """

    wall_ms: float
    cpu_ms: float
    wall_min_ms: float
    cpu_min_ms: float


def measure_ms(path: Path, seconds: Sequence[float], repeats: int = 7, n_mels: int = 80,
               warmup: int = 2) -> dict[float, Timing]:
    """Timing of one model per audio length (see measure_interleaved)."""
    jobs = [(float(s), path, float(s)) for s in seconds]
    return measure_interleaved(jobs, repeats, n_mels, warmup)


def measure_interleaved(jobs: Sequence[tuple[Hashable, Path, float]], repeats: int = 7,
                        n_mels: int = 80, warmup: int = 2) -> dict[Hashable, Timing]:
    """Timing per job (key, ONNX path, audio seconds): 1 thread, median over `repeats` rounds.

    Each round runs every job once, so a burst of load from other processes on a shared machine
    spreads over all jobs instead of spoiling one job's repeats.
    """
    sessions: dict[Path, Any] = {}
    feeds = {}
    rng = np.random.default_rng(0)
    for key, path, s in jobs:
        if path not in sessions:
            sessions[path] = session(path)
        frames = round(s * FEATURE_FRAMES_PER_SECOND)
        feeds[key] = {"features": rng.standard_normal((1, n_mels, frames)).astype(np.float32),
                      "feat_lengths": np.array([frames], dtype=np.int64)}
    for key, path, _ in jobs:
        for _ in range(warmup):
            sessions[path].run(None, feeds[key])
    wall: dict[Hashable, list[float]] = {key: [] for key, _, _ in jobs}
    cpu: dict[Hashable, list[float]] = {key: [] for key, _, _ in jobs}
    for _ in range(repeats):
        for key, path, _ in jobs:
            c = time.thread_time()
            t = time.perf_counter()
            sessions[path].run(None, feeds[key])
            wall[key].append((time.perf_counter() - t) * 1e3)
            cpu[key].append((time.thread_time() - c) * 1e3)
    return {key: Timing(statistics.median(wall[key]), statistics.median(cpu[key]),
                        min(wall[key]), min(cpu[key])) for key, _, _ in jobs}
