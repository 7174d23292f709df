"""Device profiles: the numbers the latency model needs, each with its source, as data files.

Every profile lives next to this file, `workbench/latency/devices/<name>.json` (a package, so
setuptools ships the JSON files as package data). Every field is an object

    {"value": <number, string or null>, "source": "<where the number comes from>", "mark": "V|D|U"}

with the marks of ../shared/devices.md: V read in the source, D derived from V numbers (the
arithmetic is in the source text), U unverified placeholder. `efficiency` holds one such object per
op class. A null value means "does not apply" (no fp16 arithmetic, no flash, no scratchpad SRAM).

`int4_compute` says what arithmetic the runtime runs layers with <= 4-bit weights in: "int8"
(unpacked to int8 and multiplied by the int8 kernels, e.g. XNNPACK qc4w) or "fp32" (the weights
stay 4-bit in memory, each call dequantizes them to fp32 and runs the fp32 GEMM: ONNX Runtime's
CPU MatMulNBits at accuracy_level 0, which is what workbench's export writes). With "fp32",
`int4_dequant_ns_per_weight` prices that per-call dequantization (null with "int8").

`int8_conv_compute` says the same for Conv layers with 5..8-bit weights: "int8" (integer conv
kernels: XNNPACK, CMSIS-NN, TensorRT) or "fp32" (what workbench's ONNX export writes for them:
int8 weights + DequantizeLinear + the fp32 Conv, since ORT's ConvInteger was slower than the fp32
Conv on this CPU; ORT does not constant-fold a weight DequantizeLinear, so every call dequantizes
the weight). With "fp32", `int8_conv_dequant_ns_per_weight` prices that (null with "int8").

The `host` profile is this machine: `workbench calibrate` measures ONNX Runtime here and writes
fitted efficiencies to the per-user cache (`host_profile.json` under `workbench.paths.cache_dir()`,
never the repo); `load_device("host")` overlays that file and says `calibrated=True` and when.
"""
from __future__ import annotations

import difflib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any

from workbench.errors import DeviceError
from workbench.paths import cache_dir

#: Op classes with their own efficiency factor (see workbench.latency.cost).
OP_CLASSES = ("matmul_fp32", "matmul_int8", "conv", "attention_scores", "elementwise", "memory")
#: Fields every device file must have (each a {"value", "source", "mark"} object).
FIELDS = ("description", "runtime", "threads", "peak_gflops_fp32", "peak_gops_int8",
          "peak_gflops_fp16", "memory_bandwidth_gbs", "efficiency", "overhead_us_per_op",
          "ram_mb", "flash_mb", "sram_kb", "quantized_activation_bits", "error_band_pct",
          "int4_compute", "int4_dequant_ns_per_weight", "int8_conv_compute",
          "int8_conv_dequant_ns_per_weight")
#: Fields that may be null ("does not apply").
NULLABLE = ("peak_gflops_fp16", "flash_mb", "sram_kb", "int4_dequant_ns_per_weight",
            "int8_conv_dequant_ns_per_weight")
#: Per-weight dequantization costs (ns): may be 0, never negative.
DEQUANT_FIELDS = ("int4_dequant_ns_per_weight", "int8_conv_dequant_ns_per_weight")
#: What a runtime runs <= 4-bit weights in (module docstring).
INT4_COMPUTE = ("int8", "fp32")
#: What a runtime runs 5..8-bit Conv weights in (module docstring).
INT8_CONV_COMPUTE = ("int8", "fp32")
MARKS = ("V", "D", "U")
#: File name of the calibrated host profile inside the per-user cache directory.
HOST_CACHE_FILE = "host_profile.json"


@dataclass(frozen=True)
class Efficiency:
    """Fraction of the peak each op class reaches in the modelled runtime (> 0, usually <= 1)."""

    matmul_fp32: float
    matmul_int8: float
    conv: float
    attention_scores: float
    elementwise: float
    memory: float            # fraction of memory_bandwidth_gbs


@dataclass(frozen=True)
class DeviceProfile:
    """One device + runtime. Units are in the field names; `sources` maps field -> 'text [mark]'."""

    name: str
    description: str
    runtime: str
    threads: int
    peak_gflops_fp32: float
    peak_gops_int8: float
    peak_gflops_fp16: float | None
    memory_bandwidth_gbs: float
    efficiency: Efficiency
    overhead_us_per_op: float
    ram_mb: float
    flash_mb: float | None
    sram_kb: float | None
    quantized_activation_bits: int
    error_band_pct: float
    #: arithmetic of <= 4-bit weight layers: "int8" or "fp32" (dequantized per call, see above)
    int4_compute: str = "int8"
    int4_dequant_ns_per_weight: float | None = None   # ns per weight per call ("fp32" only)
    #: arithmetic of 5..8-bit Conv weight layers: "int8" or "fp32" (DequantizeLinear per call)
    int8_conv_compute: str = "int8"
    int8_conv_dequant_ns_per_weight: float | None = None   # ns per weight per call ("fp32" only)
    sources: Mapping[str, str] = field(default_factory=dict, compare=False)
    calibrated: bool = False
    calibrated_at: str | None = None     # ISO time of the calibration run, if calibrated
    path: str = ""                       # the file(s) the profile was read from

    def peak_ops(self, precision: str) -> float:
        """Peak operations per second (FLOP/s or OP/s) for 'fp32', 'fp16' or 'int8'."""
        if precision == "int8":
            return self.peak_gops_int8 * 1e9
        if precision == "fp16" and self.peak_gflops_fp16 is not None:
            return self.peak_gflops_fp16 * 1e9
        return self.peak_gflops_fp32 * 1e9


def devices_dir() -> Path:
    """The directory of the shipped device files (this package)."""
    return Path(str(resources.files(__name__)))


def known_devices() -> tuple[str, ...]:
    return tuple(sorted(p.stem for p in devices_dir().glob("*.json")))


def host_cache_path() -> Path:
    return cache_dir() / HOST_CACHE_FILE


def load_device(name: str | DeviceProfile) -> DeviceProfile:
    """The profile named `name` (see known_devices()); 'host' includes the calibration if any."""
    if isinstance(name, DeviceProfile):
        return name
    known = known_devices()
    if name not in known:
        hit = difflib.get_close_matches(str(name), known, n=1, cutoff=0.5)
        hint = f" did you mean '{hit[0]}'?" if hit else ""
        raise DeviceError(f"device: unknown device '{name}';{hint} known devices: "
                          f"{', '.join(known)}.")
    path = devices_dir() / f"{name}.json"
    profile = parse_device(_read_json(path), str(path))
    if name == "host":
        cache = host_cache_path()
        if cache.is_file():
            profile = apply_calibration(profile, _read_json(cache), str(cache))
    return profile


def parse_device(data: Mapping[str, Any], source_name: str) -> DeviceProfile:
    """Validate a device file's content; DeviceError names the file and the missing/bad field."""
    if not isinstance(data, Mapping):
        raise DeviceError(f"{source_name}: a device file must hold a JSON object.")
    for key in FIELDS:
        if key not in data:
            raise DeviceError(f"{source_name}: missing field '{key}'. Every device file needs "
                              f"{', '.join(FIELDS)} (each {{\"value\", \"source\", \"mark\"}}).")
    sources: dict[str, str] = {}
    values: dict[str, Any] = {}
    for key in FIELDS:
        if key == "efficiency":
            continue
        values[key] = _field(data[key], key, source_name, sources)
    eff_data = data["efficiency"]
    if not isinstance(eff_data, Mapping):
        raise DeviceError(f"{source_name}: field 'efficiency' must be an object with "
                          f"{', '.join(OP_CLASSES)}.")
    eff = {}
    for op in OP_CLASSES:
        if op not in eff_data:
            raise DeviceError(f"{source_name}: missing field 'efficiency.{op}'.")
        eff[op] = _number(_field(eff_data[op], f"efficiency.{op}", source_name, sources),
                          f"efficiency.{op}", source_name, positive=True)
    for key in ("threads", "peak_gflops_fp32", "peak_gops_int8", "memory_bandwidth_gbs",
                "overhead_us_per_op", "ram_mb", "quantized_activation_bits", "error_band_pct"):
        values[key] = _number(values[key], key, source_name, positive=key != "overhead_us_per_op")
    for key in NULLABLE:
        if values[key] is not None:
            values[key] = _number(values[key], key, source_name,
                                  positive=key not in DEQUANT_FIELDS)
    for key, allowed, dequant in (("int4_compute", INT4_COMPUTE, "int4_dequant_ns_per_weight"),
                                  ("int8_conv_compute", INT8_CONV_COMPUTE,
                                   "int8_conv_dequant_ns_per_weight")):
        if values[key] not in allowed:
            raise DeviceError(f"{source_name}: field '{key}' must be one of "
                              f"{', '.join(allowed)}, got {values[key]!r}.")
        if values[key] == "fp32" and values[dequant] is None:
            raise DeviceError(f"{source_name}: field '{dequant}' may not be null when {key} is "
                              f"'fp32' (the per-call dequantization is priced).")
    name = data.get("name", Path(source_name).stem)
    return DeviceProfile(name=str(name), description=str(values["description"]),
                         runtime=str(values["runtime"]), threads=int(values["threads"]),
                         peak_gflops_fp32=values["peak_gflops_fp32"],
                         peak_gops_int8=values["peak_gops_int8"],
                         peak_gflops_fp16=values["peak_gflops_fp16"],
                         memory_bandwidth_gbs=values["memory_bandwidth_gbs"],
                         efficiency=Efficiency(**eff),
                         overhead_us_per_op=values["overhead_us_per_op"],
                         ram_mb=values["ram_mb"], flash_mb=values["flash_mb"],
                         sram_kb=values["sram_kb"],
                         quantized_activation_bits=int(values["quantized_activation_bits"]),
                         error_band_pct=values["error_band_pct"],
                         int4_compute=str(values["int4_compute"]),
                         int4_dequant_ns_per_weight=values["int4_dequant_ns_per_weight"],
                         int8_conv_compute=str(values["int8_conv_compute"]),
                         int8_conv_dequant_ns_per_weight=values[
                             "int8_conv_dequant_ns_per_weight"],
                         sources=sources, path=source_name)


def apply_calibration(profile: DeviceProfile, data: Mapping[str, Any], source_name: str
                      ) -> DeviceProfile:
    """Overlay a calibration file (written by `calibrate`) on the shipped host profile.

    Layout: {"calibrated_at": ISO time, "machine": {...}, "efficiency": {op: value},
    "overhead_us_per_op": value, "error_band_pct": value, "ram_mb": value,
    "int4_dequant_ns_per_weight": value (optional: calibrations before 2026-12-03 08:00 have
    none, and the shipped value stays), "int8_conv_dequant_ns_per_weight": value (optional, the
    same way: calibrations before 2026-12-03 09:00 have none), ...}.
    """
    try:
        eff = replace(profile.efficiency, **{k: float(v) for k, v in data["efficiency"].items()
                                              if k in OP_CLASSES})
        note = f"fitted by workbench calibrate at {data['calibrated_at']} ({source_name})"
        sources = dict(profile.sources)
        for op in OP_CLASSES:
            sources[f"efficiency.{op}"] = note + " [D]"
        for key in ("overhead_us_per_op", "error_band_pct", "ram_mb"):
            sources[key] = note + " [D]"
        dequant = {key: getattr(profile, key) for key in DEQUANT_FIELDS}
        for key in DEQUANT_FIELDS:
            if data.get(key) is not None:
                dequant[key] = float(data[key])
                if dequant[key] < 0:
                    raise ValueError(f"{key} must be >= 0, got {dequant[key]}")
                sources[key] = note + " [D]"
        return replace(profile, efficiency=eff, **dequant,
                       overhead_us_per_op=float(data["overhead_us_per_op"]),
                       error_band_pct=float(data["error_band_pct"]),
                       ram_mb=float(data.get("ram_mb", profile.ram_mb)),
                       calibrated=True, calibrated_at=str(data["calibrated_at"]),
                       sources=sources, path=f"{profile.path} + {source_name}")
    except (KeyError, TypeError, ValueError) as err:
        raise DeviceError(f"{source_name}: not a valid host calibration ({err!r}); delete it and "
                          f"run `workbench calibrate` again.") from None


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise DeviceError(f"{path}: invalid JSON ({err}).") from None


def _field(obj: Any, key: str, source_name: str, sources: dict[str, str]) -> Any:
    if not isinstance(obj, Mapping) or not {"value", "source", "mark"} <= obj.keys():
        raise DeviceError(f"{source_name}: field '{key}' must be an object with 'value', "
                          f"'source' and 'mark' (V/D/U), got {obj!r}.")
    if obj["mark"] not in MARKS:
        raise DeviceError(f"{source_name}: field '{key}' has mark {obj['mark']!r}; use one of "
                          f"{', '.join(MARKS)}.")
    if obj["value"] is None and key not in NULLABLE:
        raise DeviceError(f"{source_name}: field '{key}' may not be null.")
    sources[key] = f"{obj['source']} [{obj['mark']}]"
    return obj["value"]


def _number(value: Any, key: str, source_name: str, positive: bool) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise DeviceError(f"{source_name}: field '{key}' must be a number, got {value!r}.")
    if value < 0 or (positive and value == 0):
        raise DeviceError(f"{source_name}: field '{key}' must be {'> 0' if positive else '>= 0'}, "
                          f"got {value!r}.")
    return float(value)
