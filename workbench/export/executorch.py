"""ExecuTorch export: plan -> `.pte` (XNNPACK delegate), int8 through ExecuTorch's own pt2e flow.

    build_pte(model, plan, calib=None, strict=False) -> PteExport      (nothing written to disk)
    PteSession(blob, threads)                                          runs a .pte like an ORT
                                                                       session (`run(None, feeds)`)

    model ─ compress(plan without quant) ─> structural ─ torch.export (dynamic T) ─┐
                                                                                   │
      plan bits ─> XNNPACKQuantizer (per plan layer, by module path) ─ prepare_pt2e / convert_pt2e
                                                                                   │
                 to_edge_transform_and_lower(XnnpackPartitioner) ─> to_executorch ─> .pte bytes

Per layer (`pte_decide`, the quant technique's ExecuTorch handler in the registry): int8
weights -> XNNPACK dynamically quantized int8 (weights per channel, symmetric [-127, 127]: the
simulation's int8 weights themselves, see `_simulated_weights` / `_plan_grid`; the input
quantized at run time per frame (linears) or per utterance (convs), emulated by
`emulation.emulate_xnnpack_dynamic`); int8 weights + act_bits 8 -> static int8
(activation ranges calibrated by the quantizer's observers on the calibration utterances);
anything else has no XNNPACK int kernel in this flow and is rounded up to int8 per channel
(2-7 bits, per_block, asymmetric) or kept fp32 (fp16, activation-only), listed in the report
(`--strict` refuses them).

Whisper's sinusoid position table is computed in the graph from its float64 formula (rounded to
fp16 as the checkpoint is), not stored: 2.3 MB less, the same numbers (see `positions`); it costs
T' x 384 sin/cos per run. Imports of executorch / torchao happen inside functions.
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import io
import logging
import os
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from workbench.models.base import input_spec
from workbench.compress import compress
from workbench.errors import PlanError
from workbench.evaluate import EvalSet
from workbench.export.calibration_set import calibration_batches
from workbench.compress.techniques import technique
from workbench.compress.techniques.quantization_runtime import Decision
from workbench.export.errors import ExportError, UnsupportedBitsError
from workbench.onnx_tools.exporter import EXAMPLE_FRAMES, MIN_FRAMES, max_input_frames
from workbench.export.structural import layer_quant, structural_plan
from workbench.features import FRAMES_PER_SECOND
from workbench.plan import CompressionPlan
from workbench.models.whisper_ctc import whisper_sinusoids

DELIVERABLE_PTE = "model.pte"
#: Longest input of models without a position limit, in mel frames (30 s, Whisper's window):
#: ExecuTorch plans its memory for the longest input.
MAX_FRAMES = 3000


def _depthwise_fp32(model: nn.Module, d: Decision) -> Decision:
    """XNNPACK quantizes no depthwise / grouped conv dynamically: such a layer stays fp32."""
    if d.kind != "conv" or d.method == "fp32" or d.act_static:
        return d
    if getattr(model.get_submodule(d.path), "groups", 1) == 1:
        return d
    return Decision(d.path, d.kind, d.planned, "fp32", 32, d.granularity, d.symmetric, False,
                    False, exact=False, changes=d.changes + (
                        "grouped / depthwise conv: no XNNPACK dynamic int8 kernel, kept fp32",))


def runs_as(d: Decision) -> str:
    if d.method == "fp32":
        return "fp32 (XNNPACK)"
    if d.act_static:
        return f"XNNPACK int8 static ({d.granularity} weights, input int8 per tensor)"
    return f"XNNPACK int8 dynamic ({d.granularity} weights, input int8 per row at run time)"


@dataclass(frozen=True)
class PteExport:
    """Everything a .pte export produced, in memory."""

    model: bytes                            # the .pte (int8 per the plan, or fp32)
    decisions: tuple[Decision, ...]
    structural: nn.Module                   # compress(model, plan without quant)
    sim: nn.Module                          # compress(model, plan): the simulation
    computed_positions: bool                # the sinusoid table is computed in the graph
    notes: tuple[str, ...]
    seconds: dict[str, float]               # time per stage (export, quantize, lower)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """torch.export / ExecuTorch print and warn a lot; keep the CLI's stdout (JSON) clean."""
    loggers = [logging.getLogger(n) for n in ("torch", "executorch", "torchao", "root", "")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


class _SinusoidFormula:
    """Stands in for a Whisper model's `positional_embedding` buffer while exporting:
    `table[:n]` computes rows 0..n-1 from the float64 formula, rounded to fp16 (traced)."""

    def __init__(self, channels: int) -> None:
        from workbench.export.positions import inv_timescales
        self.inv = torch.from_numpy(inv_timescales(channels))      # (C/2,) float64

    def __getitem__(self, rows: slice) -> torch.Tensor:
        t = torch.arange(rows.stop, dtype=torch.float64)[:, None] * self.inv[None, :]
        return torch.cat([t.sin(), t.cos()], dim=1).to(torch.float16).to(torch.float32)


def _with_computed_positions(work: nn.Module) -> bool:
    """Swap a Whisper sinusoid table (equal to the formula bit for bit) for `_SinusoidFormula`."""
    table = getattr(work, "_buffers", {}).get("positional_embedding")
    if table is None or table.dim() != 2:
        return False
    if not torch.equal(table, whisper_sinusoids(table.shape[0], table.shape[1])):
        return False
    del work._buffers["positional_embedding"]
    object.__setattr__(work, "positional_embedding", _SinusoidFormula(table.shape[1]))
    return True


class _Conv1dAs2d(nn.Conv2d):
    """A Conv1d run as a (1 x k) Conv2d on (B, C, 1, T): XNNPACK quantizes only 2-D convs
    dynamically. Same module path, same weights (one more axis), same numbers."""

    @classmethod
    def of(cls, conv: nn.Conv1d) -> _Conv1dAs2d:
        new = cls(conv.in_channels, conv.out_channels, (1, conv.kernel_size[0]),
                  stride=(1, conv.stride[0]), padding=(0, conv.padding[0]),
                  dilation=(1, conv.dilation[0]), groups=conv.groups, bias=conv.bias is not None)
        with torch.no_grad():
            new.weight.copy_(conv.weight[:, :, None, :])
            if conv.bias is not None:
                new.bias.copy_(conv.bias)
        return new

    def forward(self, x: torch.Tensor) -> torch.Tensor:           # (B, C, T) -> (B, C', T')
        return super().forward(x[:, :, None, :])[:, :, 0, :]


def _convs_as_2d(work: nn.Module, paths: set[str]) -> None:
    """Replace the non-depthwise Conv1d layers at `paths` by `_Conv1dAs2d` (in place)."""
    for path in sorted(paths):
        conv = work.get_submodule(path)
        if type(conv) is nn.Conv1d and conv.groups == 1 and isinstance(conv.padding, tuple):
            parent, _, name = path.rpartition(".")
            setattr(work.get_submodule(parent) if parent else work, name, _Conv1dAs2d.of(conv))


class _NoScalarTransform:
    """Mixin: skip XNNPACKQuantizer's scalar-to-tensor rewrite, which turns the integer
    constants of the length arithmetic ((T - 1) // 2 + 1) into float tensors (dtype error).
    We quantize no add / mul with scalars, so nothing else needs it."""

    def transform_for_annotation(self, model: torch.fx.GraphModule) -> torch.fx.GraphModule:
        return model


def _weights_in_their_module(gm: torch.fx.GraphModule) -> None:
    """Give weight / bias nodes (get_attr) the module stack of the op using them: the quantizer's
    module-name filter checks every node of a conv's partition (op, weight, bias), and get_attr
    nodes carry no stack, so a conv selected by module path would never be quantized."""
    for node in gm.graph.nodes:
        if node.op == "get_attr" and "nn_module_stack" not in node.meta and node.users:
            user = next(iter(node.users))
            if "nn_module_stack" in user.meta:
                node.meta["nn_module_stack"] = user.meta["nn_module_stack"]


def _quantizer(decisions: Sequence[Decision]) -> Any:
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer, get_symmetric_quantization_config)

    class Quantizer(_NoScalarTransform, XNNPACKQuantizer):
        pass

    q = Quantizer()
    for d in decisions:
        if d.method == "fp32":
            continue
        q.set_module_name(d.path, _plan_grid(get_symmetric_quantization_config(
            is_per_channel=d.granularity == "per_channel", is_dynamic=not d.act_static)))
    return q


def _plan_grid(config: Any) -> Any:
    """XNNPACKQuantizer's config with the simulation's weight grid: its weight observer clamps
    every scale to >= 2**-12 (eps), which coarsens channels whose max |w| < 127 * 2**-12 = 0.031
    (35 of the demo's 15,133 channels, e.g. 6 rows of blocks.0.attn.out_proj); the simulation's
    scale is max |w| / 127 for every channel. float32's eps keeps zero scales out."""
    weight = config.weight
    observer_class = weight.observer_or_fake_quant_ctr.p.func       # PartialWrapper(partial)
    observer = observer_class.with_args(eps=torch.finfo(torch.float32).eps)
    return dataclasses.replace(config, weight=dataclasses.replace(
        weight, observer_or_fake_quant_ctr=observer))


def _simulated_weights(work: nn.Module, sim: nn.Module, decisions: Sequence[Decision]) -> None:
    """Give each exactly-exported int8 layer of `work` the simulation's fake-quantized weight
    (in place). The quantizer then finds the same per-channel scale (max |w'| / 127, up to one
    float32 ulp) and integer levels q = w' / scale exactly, instead of re-rounding the float
    weights: torchao rounds w * (1 / scale), the simulation w / scale, and the two disagree on
    near-ties (fp16-valued checkpoints have exact .5 ties; 2 of blocks.0.attn.q_proj's 147,456
    weights land one level apart)."""
    with torch.no_grad():
        for d in decisions:
            if d.method == "fp32" or not d.exact:
                continue
            target, source = work.get_submodule(d.path), sim.get_submodule(d.path)
            if target.weight.shape != source.weight.shape:
                raise ExportError(f"{d.path}: simulated weight {tuple(source.weight.shape)} "
                                  f"does not fit the exported layer {tuple(target.weight.shape)}")
            target.weight.copy_(source.weight.float())


def lower_to_pte(work: nn.Module, example: tuple[Any, ...], shapes: Any,
                 decisions: Sequence[Decision], calib_inputs: Sequence[tuple[Any, ...]] = (),
                 seconds: dict[str, float] | None = None) -> bytes:
    """torch.export `work` (fp32, structural), quantize the layers of `decisions` with
    XNNPACKQuantizer (by module path), lower to XNNPACK: the .pte bytes. `calib_inputs` feed the
    observers of static layers. Raises whatever torch.export / ExecuTorch raise."""
    seconds = {} if seconds is None else seconds
    start = time.perf_counter()
    with _quiet(), torch.no_grad():
        program = torch.export.export(work, example, dynamic_shapes=shapes)
        seconds["torch_export"] = round(time.perf_counter() - start, 1)
        if any(d.method != "fp32" for d in decisions):
            from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
            graph_module = program.module()
            _weights_in_their_module(graph_module)
            prepared = prepare_pt2e(graph_module, _quantizer(decisions))
            for args in calib_inputs:
                prepared(*args)
            if not any(d.act_static for d in decisions):
                prepared(*example)      # dynamic: observers only need to see the shapes
            converted = convert_pt2e(prepared)
            program = torch.export.export(converted, example, dynamic_shapes=shapes)
            seconds["quantize"] = round(time.perf_counter() - start - sum(seconds.values()), 1)
        from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
        from executorch.exir import to_edge_transform_and_lower
        blob = to_edge_transform_and_lower(
            program, partitioner=[XnnpackPartitioner()]).to_executorch().buffer
        seconds["lower"] = round(time.perf_counter() - start - sum(seconds.values()), 1)
    return bytes(blob)


def build_pte(model: nn.Module, plan: CompressionPlan, calib: EvalSet | None = None,
              strict: bool = False, force: bool = False, example_frames: int = EXAMPLE_FRAMES
              ) -> PteExport:
    """Export `model` compressed by `plan` to ExecuTorch bytes (see the module docstring).

    `model` is not changed. PlanError on a bad plan; UnsupportedBitsError under `strict` when a
    layer cannot run as planned; ExportError when torch.export / lowering fails.
    """
    layers = layer_quant(model, plan, force, runtime="executorch")
    pte_decide = technique("quant").runtime_exports["executorch"]     # the technique's handler
    decisions = [_depthwise_fp32(model, pte_decide(p, kind, q)) for p, (kind, q) in layers.items()]
    inexact = [d for d in decisions if d.changes]
    if strict and inexact:
        lines = "; ".join(f"{d.path} ({d.planned}): {', '.join(d.changes)}" for d in inexact)
        raise UnsupportedBitsError(f"--strict: {len(inexact)} layer(s) cannot run in ExecuTorch "
                                   f"(XNNPACK) as planned: {lines}. Use int8 symmetric per "
                                   f"channel / per tensor, or drop --strict.")
    static = any(d.act_static for d in decisions)
    if static and calib is None:
        raise PlanError("this plan quantizes activations (act_bits): the ExecuTorch export needs "
                        "calibration utterances (data/calib).")
    batches = calibration_batches(calib) if calib is not None else None
    structural = compress(model, structural_plan(plan), batches, force=force)
    sim = compress(model, plan, batches, force=force)
    seconds: dict[str, float] = {}
    work = copy.deepcopy(structural).float().eval()
    _simulated_weights(work, sim, decisions)
    computed = _with_computed_positions(work)
    _convs_as_2d(work, {d.path for d in decisions if d.kind == "conv" and d.method != "fp32"})
    n_mels = input_spec(work).channels        # 1 for a waveform model (workbench.byo)
    t_max = max_input_frames(work)
    frames = min(example_frames, t_max) if t_max else example_frames
    example = (torch.zeros(1, n_mels, frames), torch.tensor([frames], dtype=torch.long))
    # Dim.DYNAMIC(min, max) rather than a named Dim: torch.export may narrow it to what it can
    # prove (a named Dim fails on the Conformer's guard T' = (T - 1) // 4 + 1 != 1). The upper
    # bound is required: ExecuTorch plans memory for the longest input.
    shapes = ({2: torch.export.Dim.DYNAMIC(min=MIN_FRAMES, max=t_max or MAX_FRAMES)}, None)
    calib_inputs = ([(f[None], torch.tensor([f.shape[-1]])) for f in calib.features]
                    if (static and calib is not None) else [])
    try:
        blob = lower_to_pte(work, example, shapes, decisions, calib_inputs, seconds)
    except (PlanError, ExportError):
        raise
    except Exception as err:  # torch.export / lowering raise many types: one line for the user
        first = next((ln for ln in str(err).splitlines() if ln.strip()), type(err).__name__)
        raise ExportError(f"{type(work).__name__}: ExecuTorch export failed: {first[:300]}") \
            from err
    notes = []
    if computed:
        notes.append("Whisper position table computed in the graph from its formula (not stored)")
    return PteExport(blob, tuple(decisions), structural, sim, computed, tuple(notes),
                     seconds)


# --- running a .pte --------------------------------------------------------------------------

def set_threads(threads: int) -> None:
    """XNNPACK's thread pool size in this process (ExecuTorch has one pool per process)."""
    from executorch.extension.pybindings import portable_lib
    portable_lib._unsafe_reset_threadpool(int(threads))


class PteSession:
    """A loaded .pte with ONNX Runtime's `run(None, feeds)` shape, so the export's verify code
    (`evaluate_ort`, `parity_stats`) measures it unchanged."""

    def __init__(self, blob: bytes) -> None:
        from executorch.runtime import Runtime
        with contextlib.redirect_stderr(io.StringIO()):
            self.program = Runtime.get().load_program(blob)
        self.method = self.program.load_method("forward")

    def run(self, _names: Any, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        outs = self.method.execute([torch.from_numpy(np.ascontiguousarray(feeds["features"])),
                                    torch.from_numpy(np.asarray(feeds["feat_lengths"]))])
        return [o.numpy() for o in outs]


def pte_latency_ms(blob: bytes, threads: int = 1, seconds: float = 5.0, repeats: int = 15,
                   warmup: int = 3, n_mels: int = 80, rate: int = FRAMES_PER_SECOND) -> float:
    """Median run time (ms) of the .pte on a `seconds` input with `threads` threads: the ORT
    timing harness and its clock (onnx_tools.runtime.time_interleaved, CLOCK), seeded normal
    features (zeros would give XNNPACK's dynamic int8 convert an empty range)."""
    from workbench.onnx_tools.runtime import time_interleaved
    set_threads(threads)
    timings = time_interleaved([("pte", blob, seconds)], threads, repeats, warmup, n_mels, rate,
                               make=lambda model, _threads: PteSession(model))
    return round(timings.by_job["pte"].ms, 3)


def delegated_ops(blob: bytes) -> dict[str, Any]:
    """What the program runs: delegate calls (XNNPACK) and ops left to portable kernels."""
    from executorch.exir._serialize._program import deserialize_pte_binary
    program = deserialize_pte_binary(blob)
    program = getattr(program, "program", program)
    plan = program.execution_plan[0]
    delegates = [d.id for d in plan.delegates]
    ops = sorted({op.name for op in plan.operators})
    return {"delegate_calls": len(delegates), "backends": sorted(set(delegates)),
            "non_delegated_ops": ops}


def load_average() -> float:
    return round(os.getloadavg()[0], 2)
