"""predict_latency on an edge device: trace -> fuse -> price with device x runtime x threads.

Called by `workbench.latency.predict_latency` for every device except the calibrated `host`
(ONNX Runtime on this machine, priced by cost.py and checked by `workbench bench latency`).

    predict_latency(model, "rpi4_a72", 8.0, plan, runtime="tflite", threads=1)
    predict_latency(cnn, "cortex_m4_stm32l4", make_inputs=lambda s: (torch.randn(1, 3, 96, 96),))
    predict_latency(model, device_file="my_board.json", runtime="xnnpack")

Input checks raise WorkbenchError subclasses that name the argument and the fix.
"""
from __future__ import annotations

import difflib
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from torch import nn

from workbench.errors import WorkbenchError
from workbench.plan import CompressionPlan
from workbench.latency.edge import BYTES, OpTime, price_ops
from workbench.latency.graph import FusedOp, fused_ops
from workbench.latency.report import LatencyReport, LayerLatency, MemoryFit
from workbench.compress.resolution import resolve
from workbench.latency.table import (_check_bits, bits_for, compressed_for_pricing, hooked_paths,
                                     layer_table, with_technique_rows)
from workbench.latency.hardware import (EdgeDevice, Runtime, UnknownDeviceError,
                                        edge_device_names, load_edge_device, load_runtime)
from workbench.layer_profile import default_inputs
from workbench.models.base import role_of

#: Longest audio (s) a prediction accepts: an hour; longer is almost surely a unit mistake.
MAX_SECONDS = 3600.0
#: Device names of the first latency model, kept working: old name -> device file.
ALIASES = {"rpi4": "rpi4_a72", "rpi5": "rpi5_a76", "phone_a76": "phone_pixel4_a76",
           "cortex_m7": "cortex_m7_stm32h743", "jetson_orin_nano": "jetson_orin_nano_a78ae",
           # a core without a board: the board of that core most published rows come from
           "cortex_m4": "cortex_m4_stm32l4", "cortex_m33": "cortex_m33_stm32u5",
           "cortex_m55": "cortex_m55_alif_e7", "rpi3": "rpi3_a53", "riscv_u74": "riscv_u74_jh7110",
           "phone_a55": "phone_pixel4_a55", "jetson": "jetson_orin_nano_a78ae",
           "pixel4": "phone_pixel4_a76"}
#: Other spellings of runtime names.
RUNTIME_ALIASES = {"litert": "xnnpack", "tflite_xnnpack": "xnnpack", "ort": "onnxruntime",
                   "onnx_runtime": "onnxruntime", "cmsis_nn": "cmsis_nn_tflm",
                   "tflm": "cmsis_nn_tflm", "tflite_micro": "cmsis_nn_tflm",
                   "stm32cube_ai": "x_cube_ai", "whisper_cpp": "ggml", "llama_cpp": "ggml",
                   "executorch_xnnpack": "executorch"}


def canonical_device(name: str) -> str:
    """Device file name for `name`: itself, an alias, or a unique prefix of one device name."""
    key = name.strip().lower().replace("-", "_").replace(" ", "_")
    known = edge_device_names()
    if key in known:
        return key
    if key in ALIASES:
        return ALIASES[key]
    matches = [n for n in known if n.startswith(key + "_")]
    return matches[0] if len(matches) == 1 else name


def canonical_runtime(name: str) -> str:
    key = name.strip().lower().replace("-", "_").replace(" ", "_").replace(".", "_")
    return RUNTIME_ALIASES.get(key, key)


class LatencyInputError(WorkbenchError):
    """A bad argument of predict_latency (seconds, threads, runtime for this device)."""


def check_seconds(seconds: Any, name: str = "audio_seconds") -> float:
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)):
        raise LatencyInputError(f"{name}: must be a number of seconds, got {seconds!r}.")
    if not math.isfinite(seconds):
        raise LatencyInputError(f"{name}: must be finite, got {seconds!r}.")
    if seconds <= 0:
        raise LatencyInputError(f"{name}: must be > 0 seconds, got {seconds!r}.")
    if seconds > MAX_SECONDS:
        raise LatencyInputError(f"{name}: {seconds!r} s is over the {MAX_SECONDS:g} s limit "
                                f"(seconds, not milliseconds or samples?).")
    return float(seconds)


def is_edge(device: Any, device_file: Any = None) -> bool:
    if device_file is not None:
        return True
    return isinstance(device, str) and canonical_device(device) in edge_device_names()


def edge_names() -> tuple[str, ...]:
    return edge_device_names()


def resolve_target(device: str | None, runtime: str | Runtime | None, threads: Any,
                   device_file: str | Path | None = None
                   ) -> tuple[EdgeDevice, Runtime, int]:
    """Device, runtime and thread count, with the device file's defaults and clear errors."""
    if device_file is not None:
        dev = load_edge_device(path=device_file)
    else:
        dev = load_edge_device(canonical_device(device) if isinstance(device, str) else device)
    if runtime is None:
        rt = load_runtime(dev.default_runtime)
    elif isinstance(runtime, Runtime):
        rt = runtime
    elif isinstance(runtime, (str, Path)) and str(runtime).endswith(".json"):
        rt = load_runtime("", path=runtime)
    elif isinstance(runtime, str):
        rt = load_runtime(canonical_runtime(runtime))
    else:
        raise LatencyInputError(f"runtime: expected a runtime name or a .json file, got "
                                f"{runtime!r}.")
    if dev.family not in rt.families:
        raise LatencyInputError(
            f"runtime: '{rt.name}' does not run on {dev.family} devices like '{dev.name}'; "
            f"runtimes for it: {', '.join(dev.runtimes)}.")
    if threads is None:
        n = dev.default_threads
    else:
        if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
            raise LatencyInputError(f"threads: must be a whole number >= 1, got {threads!r}.")
        if threads > dev.cores:
            raise LatencyInputError(f"threads: {threads} > the {dev.cores} cores of "
                                    f"'{dev.name}'; use 1..{dev.cores}.")
        n = threads
    return dev, rt, n


def unknown_device_error(device: Any, known: Sequence[str]) -> UnknownDeviceError:
    names = list(known)
    close = difflib.get_close_matches(str(device), names, n=3, cutoff=0.4)
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    return UnknownDeviceError(f"device: unknown device {device!r}.{hint} Known: "
                              f"{', '.join(names)}.")


def bits_by_op(ops: Sequence[FusedOp], bits: Mapping[str, int],
               carried: Mapping[str, int]) -> dict[str, int | None]:
    out: dict[str, int | None] = {}
    for op in ops:
        if op.path in out:
            continue
        b = bits_for(op.path, bits) if bits else None
        out[op.path] = b if b is not None else (bits_for(op.path, carried) if carried else None)
    return out


def trace_model(model: nn.Module, seconds: float, weight_bits: Any,
                make_inputs: Callable[[float], tuple[Any, ...]] | None
                ) -> tuple[list[FusedOp], dict[str, int | None], nn.Module]:
    """Fused ops of `model` (a plan applied to a copy first) and weight bits per op path; the
    modules a technique's latency hook prices come from the hooked table (technique_ops)."""
    if not isinstance(model, nn.Module):
        raise LatencyInputError(f"model: expected a torch.nn.Module or a LayerTable, got "
                                f"{type(model).__name__}.")
    bits: dict[str, int] = {}
    resolved: dict[str, Any] = {}
    if weight_bits is not None and isinstance(weight_bits, CompressionPlan):
        resolved = resolve(weight_bits, model)
        model = compressed_for_pricing(model, weight_bits)
    elif weight_bits is not None:
        if not isinstance(weight_bits, Mapping):
            raise LatencyInputError(f"weight_bits: expected a CompressionPlan or a mapping "
                                    f"{{path: bits}}, got {type(weight_bits).__name__}.")
        bits = {str(k): _check_bits(k, v) for k, v in weight_bits.items()}
    make = make_inputs if make_inputs is not None else default_inputs(model)
    try:
        inputs = make(seconds)
    except WorkbenchError:
        raise
    except Exception as err:  # a user's make_inputs failing: say which call
        raise LatencyInputError(f"make_inputs({seconds}) failed: {err!r}") from err
    if not isinstance(inputs, tuple):
        inputs = (inputs,)
    ops = fused_ops(model, inputs)
    carried = {path: int(m.weight_bits) for path, m in model.named_modules()
               if isinstance(getattr(m, "weight_bits", None), int)}
    op_bits = bits_by_op(ops, bits, carried)
    if hooked_paths(resolved):   # the hooks, as the host path applies them (technique_ops)
        table = with_technique_rows(layer_table(model, seconds, make_inputs=make), resolved)
        ops, op_bits = technique_ops(ops, op_bits, table, resolved)
    return ops, op_bits, model


def technique_ops(ops: Sequence[FusedOp], bits: Mapping[str, int | None], hooked: Any,
                  resolved: Mapping[str, Any]) -> tuple[list[FusedOp], dict[str, int | None]]:
    """The modules a technique with a latency hook sets (`latency_row` / `latency_row_at`),
    priced as the host path prices them. `hooked`: the LayerTable of the same compressed model
    and audio length after `with_technique_rows(table, resolved)` (the one place hooks are
    applied). The ops under each such entry are replaced by the ops of its rows, converted like
    the UI's arithmetic path (`ops_from_table`), where the module ran; the other ops stay as
    traced. Idempotent: ops already replaced are replaced again. E.g. a windowed attention runs
    as a full (T, T) product masked in PyTorch; its hook prices the windowed kernel a runtime
    runs, on the host and on every edge device alike."""
    found = hooked_paths(resolved)
    roots = tuple(r for r in found if not any(r.startswith(o + ".") for o in found))
    if not roots:
        return list(ops), dict(bits)

    def root_of(path: str) -> str | None:
        return next((r for r in roots if path == r or path.startswith(r + ".")), None)

    rows = {r: tuple(row for row in hooked.layers if root_of(row.path) == r) for r in roots}
    out: list[FusedOp] = []
    for op in ops:
        root = root_of(op.path)
        if root is None:
            out.append(op)
        elif root in rows:                      # the module's first op: its rows' ops instead
            out += ops_from_table(replace(hooked, layers=rows.pop(root)))
    for left in rows.values():                  # a hooked module the trace did not see run
        out += ops_from_table(replace(hooked, layers=left))
    out_bits = {p: b for p, b in bits.items() if root_of(p) is None}
    out_bits.update({row.path: (None if row.weight_bits >= 32 else row.weight_bits)
                     for row in hooked.layers if root_of(row.path) is not None})
    return out, out_bits


def ops_from_table(table: Any) -> list[FusedOp]:
    """Fused ops from a LayerTable (the UI's arithmetic path): activation rows after a weight
    layer are fused into it, batch norm after a conv is folded, attention rows stay attention."""
    ops: list[FusedOp] = []
    for row in table.layers:
        kind = {"matmul": "gemm", "conv": "conv", "attention_scores": "attention"}.get(row.op)
        if kind is None:
            prev = ops[-1] if ops else None
            name = row.path.rsplit(".", 1)[-1].lower()
            if prev is not None and prev.kind != "elementwise" and row.params <= 4 * max(
                    row.out_width, 1) and ("norm" not in name or "batch" in name or "bn" in name):
                continue                         # fused epilogue (activation, folded BN)
            ops.append(FusedOp("elementwise", row.path, 0, row.params, row.input_bytes // 4,
                               row.output_bytes // 4))
            continue
        if kind == "conv" and 0 < row.in_width <= 25 and row.out_width >= 8:
            kind = "dwconv"                      # C_in / groups x kernel this small: depthwise
        ops.append(FusedOp(kind, row.path, row.macs, row.params if kind != "attention" else 0,
                           row.input_bytes // 4, row.output_bytes // 4))
    return ops


def edge_report(ops: Sequence[FusedOp], bits: Mapping[str, int | None], dev: EdgeDevice,
                rt: Runtime, threads: int, seconds: float,
                roles: Mapping[str, str] | None = None):
    """A cost.LatencyReport of fused ops on device x runtime x threads, with the CV band."""
    from workbench.latency.published import error_band_pct
    times: list[OpTime] = price_ops(ops, bits, dev, rt, threads)
    layers = []
    for op, t in zip(ops, times):
        w = op.weight_elems * (BYTES[t.precision] if op.kind != "attention" else 0)
        act = 1 if (t.precision == "int8" and rt.full_integer) else 4
        layers.append(LayerLatency(
            path=op.path, role=(roles or {}).get(op.path, "other"), op=op.kind,
            precision=t.precision, macs=op.macs,
            bytes_moved=int(w + (op.in_elems + op.out_elems) * act),
            compute_ms=t.compute_ms, memory_ms=t.memory_ms, overhead_ms=t.overhead_ms,
            time_ms=t.time_ms))
    total = sum(x.time_ms for x in layers)
    weight_bytes = sum(op.weight_elems * BYTES[t.precision] for op, t in zip(ops, times)
                       if op.kind in ("gemm", "conv", "dwconv"))
    act_peak = max(((op.in_elems + op.out_elems) * (1 if (t.precision == "int8" and
                                                            rt.full_integer) else 4)
                    for op, t in zip(ops, times)), default=0)
    memory = MemoryFit(
        weights_bytes=int(weight_bytes),
        weights_limit_bytes=int((dev.flash_mb if dev.flash_mb is not None else dev.ram_mb) * 1e6),
        weights_store="flash" if dev.flash_mb is not None else "RAM",
        activations_bytes=int(act_peak),
        activations_limit_bytes=int(dev.sram_kb * 1e3 if dev.sram_kb is not None
                                    else dev.ram_mb * 1e6),
        activations_store="SRAM" if dev.sram_kb is not None else "RAM")
    band, band_source = error_band_pct(dev)
    unsupported = unsupported_settings(ops, bits, rt, dev)
    source = (f"simulated, fused-graph roofline, device {dev.name} ({dev.core} @ "
              f"{dev.clock_mhz:g} MHz), runtime {rt.name}, {threads} thread(s), "
              f"+-{band:.0f} % ({band_source})")
    return LatencyReport(device=dev.name, runtime=rt.name, audio_seconds=seconds,
                         layers=tuple(layers), total_ms=total,
                         real_time_factor=total / 1e3 / seconds, error_band_pct=band,
                         calibrated=band_source.startswith("leave"), memory=memory,
                         source=source, threads=threads, unsupported=tuple(unsupported),
                         band_source=band_source)


def unsupported_settings(ops: Sequence[FusedOp], bits: Mapping[str, int | None], rt: Runtime,
                         dev: EdgeDevice) -> list[str]:
    """What the runtime cannot run as set (priced as it would run instead)."""
    out = []
    odd = sorted({b for b in bits.values() if b is not None and b not in (4, 8, 16, 32)})
    if odd:
        out.append(f"{'/'.join(map(str, odd))}-bit weights: {rt.name} has no kernel; priced "
                   f"(and exported) as the next supported width")
    wants_fp = any(b is None or b > 8 for op in ops
                   if op.kind in ("gemm", "conv", "dwconv") and op.weight_elems
                   for b in [bits.get(op.path)])
    if rt.precisions == ("int8",) and wants_fp:
        out.append(f"fp32/fp16 layers: {rt.name} runs int8 only; priced as int8 after "
                   f"full-integer conversion")
    if any(b == 16 for b in bits.values()) and dev.macs_per_cycle.get("fp16") is None:
        out.append(f"16-bit weights: {dev.core} has no fp16 arithmetic; priced as fp32")
    return out


def roles_for(model: nn.Module, ops: Sequence[FusedOp]) -> dict[str, str]:
    return {op.path: role_of(model, op.path) for op in ops}
