"""Edge devices and runtimes as sourced data files.

    dev = load_edge_device("rpi4_a72")                 # workbench/latency/edge_devices/*.json
    dev = load_edge_device(path="my_board.json")       # a user's own file, same schema
    rt = load_runtime("xnnpack")                       # workbench/latency/runtimes/*.json

Every number is an object {"value": ..., "source": "...", "mark": M}: M is V (read in the
source), D (derived from V numbers, arithmetic in the source text), U (unverified), "assumed"
(an engineering guess, no source) or "fitted" (fitted on data/latency_measurements.jsonl by
`workbench latency fit`; the file then also keeps the "prior" it was fitted from).

Device file fields (names say the core, e.g. cortex_m4_stm32l4, rpi4_a72, riscv_u74_jh7110):
    family            mcu | cortex-a | phone | riscv | jetson   (the MAPE family in the bench)
    core, clock_mhz, cores, isa (list: neon, fp16, dotprod, i8mm, dsp, helium, rvv, fpu)
    macs_per_cycle    {fp32, fp16 (null: no fp16 arithmetic), int8} per core, from the ISA
    memory_bandwidth_gbs, ram_mb, flash_mb (null: none), sram_kb (null: none), l2_kb
    default_runtime, default_threads, runtimes (the runtimes that exist for it)
Runtime file fields:
    families          device families it runs on
    precisions        what it executes natively (e.g. ["int8"] for CMSIS-NN)
    base_precision    the precision its efficiencies are given in (fp32 or int8)
    efficiency        {gemm, conv, dwconv, attention}: fraction of the device peak
    int8_factor       efficiency multiplier of int8 vs base (no dot product); int8_factor_dotprod
    fp16_factor       efficiency multiplier of fp16 arithmetic vs fp32
    elementwise_cycles  cycles per activation element of an unfused elementwise op (1 thread)
    overhead_cycles   per-op dispatch cost in core cycles
    thread_efficiency speedup per extra thread (1 = linear)
    memory_efficiency fraction of the device bandwidth a streaming op reaches
    full_integer      true: activations stay int8 between int8 ops (TFLM / CMSIS-NN / XNNPACK
                      QS8); false: dynamic quantization (ONNX Runtime, float activations)
"""
from __future__ import annotations

import difflib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from workbench.errors import DeviceError

MARKS = ("V", "D", "U", "assumed", "fitted")
FAMILIES = ("mcu", "cortex-a", "phone", "riscv", "jetson")
PRECISIONS = ("fp32", "fp16", "int8")
KINDS = ("gemm", "conv", "dwconv", "attention")
ISA_FEATURES = ("neon", "fp16", "dotprod", "i8mm", "sve", "dsp", "fpu", "helium", "rvv", "avx2",
                "avx512", "vnni")
DEVICE_NUMBERS = ("clock_mhz", "cores", "memory_bandwidth_gbs", "ram_mb", "default_threads")
RUNTIME_NUMBERS = ("int8_factor", "int8_factor_dotprod", "fp16_factor", "elementwise_cycles",
                   "overhead_cycles", "thread_efficiency", "memory_efficiency")
#: The runtime parameters `workbench latency fit` may change (log-space, with a ridge to the prior).
FITTABLE = tuple(f"efficiency.{k}" for k in KINDS) + RUNTIME_NUMBERS[:-1]


class DeviceFileError(DeviceError):
    """A device or runtime file that is missing a field or has a bad value."""


class UnknownDeviceError(DeviceError):
    """A device or runtime name that is not shipped (the message suggests the closest)."""


@dataclass(frozen=True)
class EdgeDevice:
    name: str
    family: str
    description: str
    core: str
    clock_mhz: float
    cores: int
    isa: tuple[str, ...]
    macs_per_cycle: Mapping[str, float | None]
    memory_bandwidth_gbs: float
    ram_mb: float
    flash_mb: float | None
    sram_kb: float | None
    default_runtime: str
    default_threads: int
    runtimes: tuple[str, ...]
    sources: Mapping[str, str] = field(default_factory=dict, compare=False)
    path: str = ""
    efficiency_scale: float = 1.0      # fitted compute-rate factor (1 = nominal; module doc)

    def peak_macs(self, precision: str) -> float:
        """MACs per second per core at `precision` (fp16 without arithmetic runs as fp32)."""
        mpc = self.macs_per_cycle.get(precision)
        if mpc is None:
            mpc = self.macs_per_cycle["fp32"]
        return mpc * self.clock_mhz * 1e6


@dataclass(frozen=True)
class Runtime:
    name: str
    description: str
    families: tuple[str, ...]
    precisions: tuple[str, ...]
    base_precision: str
    full_integer: bool
    params: Mapping[str, float]            # efficiency.<kind> and RUNTIME_NUMBERS
    priors: Mapping[str, float]            # what a fit starts from (assumed / sourced values)
    sources: Mapping[str, str] = field(default_factory=dict, compare=False)
    path: str = ""

    def efficiency(self, kind: str, precision: str, isa: tuple[str, ...]) -> float:
        eff = self.params[f"efficiency.{kind}"]
        if precision == "int8" and self.base_precision != "int8":
            eff *= self.params["int8_factor_dotprod" if "dotprod" in isa else "int8_factor"]
        elif precision == "fp16" and self.base_precision != "fp16":
            eff *= self.params["fp16_factor"]
        return eff


def _dir(sub: str) -> Path:
    return Path(str(resources.files("workbench.latency"))) / sub


def edge_devices_dir() -> Path:
    return _dir("edge_devices")


def runtimes_dir() -> Path:
    return _dir("runtimes")


def edge_device_names() -> tuple[str, ...]:
    return tuple(sorted(p.stem for p in edge_devices_dir().glob("*.json")))


def runtime_names() -> tuple[str, ...]:
    return tuple(sorted(p.stem for p in runtimes_dir().glob("*.json")))


def _unknown(kind: str, name: str, known: tuple[str, ...]) -> UnknownDeviceError:
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.4)
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    return UnknownDeviceError(f"{kind}: unknown {kind} '{name}'.{hint} Known: "
                              f"{', '.join(known)}.")


def load_edge_device(name: str | None = None, *, path: str | Path | None = None) -> EdgeDevice:
    """A shipped device by name, or a user's device file by path."""
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise DeviceFileError(f"device file {p}: no such file.")
        return parse_edge_device(_read_json(p), str(p))
    if not isinstance(name, str):
        raise UnknownDeviceError(f"device: expected a device name, got {name!r}.")
    known = edge_device_names()
    if name not in known:
        raise _unknown("device", name, known)
    p = edge_devices_dir() / f"{name}.json"
    return parse_edge_device(_read_json(p), str(p))


def load_runtime(name: str, *, path: str | Path | None = None) -> Runtime:
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise DeviceFileError(f"runtime file {p}: no such file.")
        return parse_runtime(_read_json(p), str(p))
    known = runtime_names()
    if name not in known:
        raise _unknown("runtime", name, known)
    p = runtimes_dir() / f"{name}.json"
    return parse_runtime(_read_json(p), str(p))


def _read_json(p: Path) -> Any:
    try:
        return json.loads(p.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DeviceFileError(f"{p}: not valid JSON ({err}).") from None


def _get(data: Mapping[str, Any], key: str, src: str, sources: dict[str, str],
         nullable: bool = False) -> Any:
    if key not in data:
        raise DeviceFileError(f"{src}: missing field '{key}' (an object with 'value', 'source' "
                              f"and 'mark').")
    obj = data[key]
    if not isinstance(obj, Mapping) or not {"value", "source", "mark"} <= obj.keys():
        raise DeviceFileError(f"{src}: field '{key}' must be an object with 'value', 'source' "
                              f"and 'mark', got {obj!r}.")
    if obj["mark"] not in MARKS:
        raise DeviceFileError(f"{src}: field '{key}' has mark {obj['mark']!r}; use one of "
                              f"{', '.join(MARKS)}.")
    if not str(obj["source"]).strip():
        raise DeviceFileError(f"{src}: field '{key}' has an empty 'source'; say where the "
                              f"number comes from, or mark it 'assumed'.")
    if obj["value"] is None and not nullable:
        raise DeviceFileError(f"{src}: field '{key}' may not be null.")
    sources[key] = f"{obj['source']} [{obj['mark']}]"
    return obj["value"]


def _num(value: Any, key: str, src: str, *, positive: bool = True, upper: float | None = None
         ) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise DeviceFileError(f"{src}: field '{key}' must be a finite number, got {value!r}.")
    if value < 0 or (positive and value == 0):
        raise DeviceFileError(f"{src}: field '{key}' must be {'> 0' if positive else '>= 0'}, "
                              f"got {value!r}.")
    if upper is not None and value > upper:
        raise DeviceFileError(f"{src}: field '{key}' = {value!r} is implausibly large "
                              f"(limit {upper:g}); check the unit in the field name.")
    return float(value)


def parse_edge_device(data: Any, src: str) -> EdgeDevice:
    if not isinstance(data, Mapping):
        raise DeviceFileError(f"{src}: a device file must hold a JSON object.")
    s: dict[str, str] = {}
    family = _get(data, "family", src, s)
    if family not in FAMILIES:
        raise DeviceFileError(f"{src}: field 'family' must be one of {', '.join(FAMILIES)}, "
                              f"got {family!r}.")
    isa = _get(data, "isa", src, s)
    if not isinstance(isa, list) or any(f not in ISA_FEATURES for f in isa):
        raise DeviceFileError(f"{src}: field 'isa' must be a list of {', '.join(ISA_FEATURES)}, "
                              f"got {isa!r}.")
    mpc_data = data.get("macs_per_cycle")
    if not isinstance(mpc_data, Mapping):
        raise DeviceFileError(f"{src}: missing field 'macs_per_cycle' (an object with fp32, fp16 "
                              f"and int8 entries).")
    mpc: dict[str, float | None] = {}
    for prec in PRECISIONS:
        v = _get(mpc_data, prec, src + " macs_per_cycle", s, nullable=prec != "fp32")
        mpc[prec] = None if v is None else _num(v, f"macs_per_cycle.{prec}", src, upper=1e4)
    clock = _num(_get(data, "clock_mhz", src, s), "clock_mhz", src, upper=10_000)
    cores = _num(_get(data, "cores", src, s), "cores", src, upper=1024)
    bw = _num(_get(data, "memory_bandwidth_gbs", src, s), "memory_bandwidth_gbs", src, upper=1e4)
    ram = _num(_get(data, "ram_mb", src, s), "ram_mb", src, upper=1e7)
    flash = _get(data, "flash_mb", src, s, nullable=True)
    sram = _get(data, "sram_kb", src, s, nullable=True)
    threads = _num(_get(data, "default_threads", src, s), "default_threads", src, upper=1024)
    runtimes = _get(data, "runtimes", src, s)
    default_rt = _get(data, "default_runtime", src, s)
    if not isinstance(runtimes, list) or not runtimes or default_rt not in runtimes:
        raise DeviceFileError(f"{src}: 'runtimes' must be a non-empty list holding "
                              f"'default_runtime' ({default_rt!r}).")
    if int(threads) != threads or threads > cores:
        raise DeviceFileError(f"{src}: 'default_threads' must be a whole number <= cores "
                              f"({cores:g}), got {threads!r}.")
    scale = 1.0
    if "efficiency_scale" in data:
        scale = _num(_get(data, "efficiency_scale", src, s), "efficiency_scale", src, upper=10.0)
    return EdgeDevice(
        efficiency_scale=scale,
        name=str(data.get("name", Path(src).stem)), family=family,
        description=str(_get(data, "description", src, s)), core=str(_get(data, "core", src, s)),
        clock_mhz=clock, cores=int(cores), isa=tuple(isa), macs_per_cycle=mpc,
        memory_bandwidth_gbs=bw, ram_mb=ram,
        flash_mb=None if flash is None else _num(flash, "flash_mb", src, upper=1e6),
        sram_kb=None if sram is None else _num(sram, "sram_kb", src, upper=1e7),
        default_runtime=str(default_rt), default_threads=int(threads),
        runtimes=tuple(str(r) for r in runtimes), sources=s, path=src)


def parse_runtime(data: Any, src: str) -> Runtime:
    if not isinstance(data, Mapping):
        raise DeviceFileError(f"{src}: a runtime file must hold a JSON object.")
    s: dict[str, str] = {}
    fams = _get(data, "families", src, s)
    if not isinstance(fams, list) or any(f not in FAMILIES for f in fams):
        raise DeviceFileError(f"{src}: 'families' must be a list of {', '.join(FAMILIES)}.")
    precs = _get(data, "precisions", src, s)
    if not isinstance(precs, list) or not precs or any(p not in PRECISIONS for p in precs):
        raise DeviceFileError(f"{src}: 'precisions' must be a non-empty list of "
                              f"{', '.join(PRECISIONS)}.")
    base = _get(data, "base_precision", src, s)
    if base not in precs:
        raise DeviceFileError(f"{src}: 'base_precision' {base!r} must be one of 'precisions'.")
    full_int = _get(data, "full_integer", src, s)
    if not isinstance(full_int, bool):
        raise DeviceFileError(f"{src}: 'full_integer' must be true or false.")
    eff = data.get("efficiency")
    if not isinstance(eff, Mapping):
        raise DeviceFileError(f"{src}: missing field 'efficiency' (gemm, conv, dwconv, "
                              f"attention).")
    params: dict[str, float] = {}
    priors: dict[str, float] = {}
    for kind in KINDS:
        key = f"efficiency.{kind}"
        params[key] = _num(_get(eff, kind, src + " efficiency", s), key, src, upper=4.0)
        priors[key] = _num(eff[kind].get("prior", params[key]), key + ".prior", src, upper=4.0)
    for key in RUNTIME_NUMBERS:
        upper = 1.0 if key == "memory_efficiency" else (1e7 if "cycles" in key else 16.0)
        params[key] = _num(_get(data, key, src, s), key, src, positive=key != "overhead_cycles",
                           upper=upper)
        priors[key] = _num(data[key].get("prior", params[key]), key + ".prior", src,
                           positive=key != "overhead_cycles", upper=upper)
    if params["thread_efficiency"] > 1:
        raise DeviceFileError(f"{src}: 'thread_efficiency' must be <= 1 (1 = linear scaling).")
    return Runtime(name=str(data.get("name", Path(src).stem)),
                   description=str(_get(data, "description", src, s)), families=tuple(fams),
                   precisions=tuple(precs), base_precision=base, full_integer=full_int,
                   params=params, priors=priors, sources=s, path=src)
