"""The objective of a search trial: WER (the Session engine), exact size, simulated latency.

    spec = EvaluatorSpec(manifest=str(REAL_TEST), device="rpi5")   # picklable recipe
    evaluator = spec.build()                                        # model + Session, once per process
    m = evaluator(plan, "quick")                                    # -> Measures

The spec is what travels to Ray workers: each worker process builds its evaluator once
(`evaluator_for`, cached by `spec.key`) and reuses the Session's block caches for every trial.
Numbers: WER is measured (greedy CTC on the eval set; "quick" = the Session's fixed-subset
estimate with its standard error, "full" = every utterance); size is exact bytes
(`workbench.size`); latency is simulated by the roofline model (`workbench.latency`), with its
error band.
"""
from __future__ import annotations

import threading
import time
import uuid
from dataclasses import asdict, dataclass, field
from typing import Any
from collections.abc import Callable
import json

import torch
from torch import nn

from workbench.errors import WorkbenchError
from workbench.compress.resolution import resolve
from workbench.latency.table import hooked_paths
from workbench.compress.techniques import shape_only
from workbench.engine.session import Session
from workbench.latency import layer_table, load_device, predict_latency
from workbench.latency import predict as edge
from workbench.plan import CompressionPlan
from workbench.size import size


@dataclass(frozen=True)
class Measures:
    kind: str                 # "quick" | "full"
    wer: float
    wer_delta: float          # vs the uncompressed model on the same utterances
    stderr: float
    utterances: int
    size_bytes: int
    latency_ms: float
    latency_band_pct: float
    eval_ms: float            # wall time of this evaluation inside the evaluator

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class EvaluatorSpec:
    """How to build the evaluator in any process. Give `model` + `eval_set` objects (pickled to
    workers), or paths (`checkpoint`, default the demo model; `manifest`, default REAL_TEST)."""

    device: str = "rpi5"
    audio_seconds: float = 8.0
    runtime: str | None = None           # edge devices: default = the device file's
    latency_threads: int | None = None   # threads the runtime uses on the device
    checkpoint: str | None = None
    manifest: str | None = None
    limit: int | None = None
    quick_utterances: int = 16
    threads: int = 1
    model: nn.Module | None = None
    eval_set: Any = None
    key: str = field(default_factory=lambda: uuid.uuid4().hex[:12])

    def describe(self) -> dict[str, Any]:
        return {"device": self.device, "audio_seconds": self.audio_seconds,
                "runtime": self.runtime, "latency_threads": self.latency_threads,
                "checkpoint": self.checkpoint or ("<object>" if self.model is not None else "demo"),
                "manifest": self.manifest or ("<object>" if self.eval_set is not None
                                              else "REAL_TEST"),
                "limit": self.limit, "quick_utterances": self.quick_utterances,
                "threads": self.threads}

    def load_model(self) -> nn.Module:
        if self.model is not None:
            return self.model
        from workbench.models import load_checkpoint, load_demo  # looked up per call: tests monkeypatch it
        return load_checkpoint(self.checkpoint) if self.checkpoint else load_demo()

    def check(self) -> None:
        """Fail fast (WorkbenchError naming the field) on a bad device / runtime / threads."""
        if edge.is_edge(self.device):
            edge.resolve_target(edge.ALIASES.get(self.device, self.device), self.runtime,
                                self.latency_threads)
        else:
            load_device(self.device)

    def build(self, session=None, model: nn.Module | None = None) -> PlanEvaluator:
        self.check()  # a bad device name fails here, before any model run
        torch.set_num_threads(self.threads)
        model = model if model is not None else self.load_model()
        if session is None:
            eval_set = self.eval_set
            if eval_set is None:
                from workbench.evaluate import load_eval_set  # looked up per call: tests monkeypatch it
                from workbench.paths import REAL_TEST  # looked up per call: tests monkeypatch it
                eval_set = load_eval_set(self.manifest or REAL_TEST, limit=self.limit,
                                         progress=False)
            session = Session(model, eval_set, quick_utterances=self.quick_utterances)
        return PlanEvaluator(model, session, self.device, self.audio_seconds, self.threads,
                             runtime=self.runtime, latency_threads=self.latency_threads)


class PlanEvaluator:
    """Measures of a plan: the Session's WER + exact size + simulated latency (cached tables)."""

    def __init__(self, model: nn.Module, session, device: str, audio_seconds: float,
                 threads: int | None = None, lock: threading.Lock | None = None, *,
                 runtime: str | None = None, latency_threads: int | None = None) -> None:
        self.model = model
        self.session = session
        self.device = device
        self.audio_seconds = float(audio_seconds)
        self.threads = threads
        self._lock = lock
        self.latency = LatencyPricer(model, device, self.audio_seconds, runtime=runtime,
                                     latency_threads=latency_threads)

    def __call__(self, plan, kind: str = "quick",
                 cancel: Callable[[], bool] | None = None) -> Measures:
        if kind not in ("quick", "full"):
            raise WorkbenchError(f"eval: '{kind}' is not an evaluation; use 'quick' or 'full'.")
        t0 = time.perf_counter()
        if self.threads:
            torch.set_num_threads(self.threads)
        if self._lock is not None:
            with self._lock:
                wer = self.session.evaluate(plan, kind, cancel=cancel)
        else:
            wer = self.session.evaluate(plan, kind, cancel=cancel)
        nbytes = size(self.model, plan).total_bytes
        report = self.latency(plan)
        return Measures(kind, float(wer.wer), float(wer.wer_delta), float(wer.stderr),
                        int(wer.utterances), int(nbytes), float(report.total_ms),
                        float(report.error_band_pct), (time.perf_counter() - t0) * 1e3)


_TRACE_LOCK = threading.Lock()


class LatencyPricer:
    """Simulated latency of plans on one device x runtime x threads, through the public latency
    API's pieces: edge devices trace the graph once per plan *structure* (structured pruning and
    low rank change shapes; bits only reprice), the host uses its calibrated roofline."""

    def __init__(self, model: nn.Module, device: str, seconds: float, *,
                 runtime: str | None = None, latency_threads: int | None = None) -> None:
        self.model, self.device, self.seconds = model, device, float(seconds)
        self.runtime, self.latency_threads = runtime, latency_threads
        self.edge = edge.is_edge(device)
        self._ops: dict[str, tuple] = {}
        if self.edge:
            edge.check_seconds(self.seconds)
            self.target = edge.resolve_target(edge.ALIASES.get(device, device), runtime,
                                              latency_threads)
        else:
            if runtime is not None:
                raise WorkbenchError(f"--runtime: '{device}' is the calibrated host (ONNX "
                                     f"Runtime); runtimes apply to edge devices only.")
            self.target = load_device(device)

    def __call__(self, plan):
        if not self.edge:
            return predict_latency(self.model, self.device, self.seconds, plan)

        resolved = resolve(plan, self.model)
        # the settings that change shapes, as the registry says (registered swaps included)
        structure = {path: kept for path, cfg in resolved.items()
                     for kept in [shape_only(cfg)] if not kept.is_empty()}
        key = json.dumps({p: c.model_dump(mode="json") for p, c in structure.items()},
                         sort_keys=True)
        if key not in self._ops:
            with _TRACE_LOCK:  # tracing is not thread-safe (seen: wrong ms from two threads)
                ops, _bits, traced = edge.trace_model(
                    self.model, self.seconds, CompressionPlan(layers=structure) if structure
                    else None, None)
            self._ops[key] = (ops, edge.roles_for(traced, ops))
            while len(self._ops) > 64:
                self._ops.pop(next(iter(self._ops)))
        ops, roles = self._ops[key]
        bits = {path: (cfg.quant.weight_bits or 32) for path, cfg in resolved.items()
                if cfg.quant is not None}
        op_bits = edge.bits_by_op(ops, bits, {})
        if hooked_paths(resolved):   # modules a latency hook prices: as predict_latency does
            hooked = layer_table(self.model, self.seconds, plan)
            ops, op_bits = edge.technique_ops(ops, op_bits, hooked, resolved)
            roles = {**roles, **{row.path: row.role for row in hooked.layers}}
        dev, rt, n = self.target
        return edge.edge_report(ops, op_bits, dev, rt, n, self.seconds, roles)


_CACHE: dict[str, PlanEvaluator] = {}
_CACHE_LOCK = threading.Lock()


def evaluator_for(spec: EvaluatorSpec) -> PlanEvaluator:
    """This process's evaluator for `spec` (built on first use; Ray workers keep it)."""
    with _CACHE_LOCK:
        ev = _CACHE.get(spec.key)
        if ev is None:
            ev = spec.build()
            _CACHE.clear()  # one model per worker process
            _CACHE[spec.key] = ev
        return ev
