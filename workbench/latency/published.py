"""Published latency measurements: load, fit the runtime efficiencies, leave-one-model-out check.

    rows = load_measurements()                        # data/latency_measurements.jsonl
    fit = fit_runtimes(rows)                          # {runtime: {param: value}}, one fit on all
    report = bench_published()                        # LOMO MAPE per family, Spearman, worst
    write_fit()                                       # fitted values -> runtimes/*.json + band

The fit is one least-squares problem over all rows and all runtime parameters at once (log error
of each row, plus a ridge pulling each parameter's log towards its prior): no constant is fitted
to one point with other terms added on top. Leave-one-model-out (LOMO): for each reference model,
refit without any row of that model and predict its rows; the error of those predictions is the
cross-validated error the UI shows as the band per device.
"""
from __future__ import annotations

import json
import math
import statistics
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, UTC
from pathlib import Path
from typing import Any

import numpy as np

from workbench.errors import DataError
from workbench.latency.edge import BYTES, op_precision, price_ops, total_ms, weight_precision
from workbench.latency.graph import FusedOp, fused_ops
from workbench.latency.hardware import (KINDS, EdgeDevice, Runtime, edge_device_names, edge_devices_dir,
                                        load_edge_device, load_runtime, runtimes_dir)
from workbench.paths import REPO_ROOT

FIELDS = ("model", "device", "runtime", "threads", "precision", "ms", "source", "date")
#: Device families the acceptance check reports (others are listed too when present).
REPORT_FAMILIES = ("mcu", "cortex-a", "phone")
#: Ridge weight on log(parameter / prior) relative to a row's log error.
RIDGE = 0.3
FIT_FILE = "published_fit.json"
#: Key of the fitted per-device compute scales in fit_runtimes' result.
DEVICE_SCALES = "__device_scales__"


def measurements_path() -> Path:
    return REPO_ROOT / "data" / "latency_measurements.jsonl"


@dataclass(frozen=True)
class Measurement:
    model: str
    device: str
    runtime: str
    threads: int
    precision: str
    ms: float
    source: str
    date: str
    note: str = ""


def load_measurements(path: str | Path | None = None) -> list[Measurement]:
    """Rows of the dataset; a bad row raises DataError naming the line and field."""
    from workbench.latency.reference_models import REFERENCE
    p = Path(path) if path is not None else measurements_path()
    rows = []
    for i, line in enumerate(p.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            d = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataError(f"{p}:{i}: not valid JSON ({err}).") from None
        missing = [k for k in FIELDS if k not in d]
        if missing:
            raise DataError(f"{p}:{i}: missing field(s) {', '.join(missing)}.")
        if d["model"] not in REFERENCE:
            raise DataError(f"{p}:{i}: model '{d['model']}' has no reference builder in "
                            f"workbench.latency.reference_models.")
        if d["precision"] not in BYTES:
            raise DataError(f"{p}:{i}: precision must be one of {', '.join(BYTES)}.")
        ms = d["ms"]
        if isinstance(ms, bool) or not isinstance(ms, (int, float)) or not 0 < ms < 1e7:
            raise DataError(f"{p}:{i}: ms must be a positive number, got {ms!r}.")
        if not str(d["source"]).startswith("http"):
            raise DataError(f"{p}:{i}: source must be a URL.")
        rows.append(Measurement(d["model"], d["device"], d["runtime"], int(d["threads"]),
                                d["precision"], float(ms), d["source"], d["date"],
                                d.get("note", "")))
    return rows


_OPS_CACHE: dict[str, list[FusedOp]] = {}


def model_ops(name: str) -> list[FusedOp]:
    """Fused ops of a reference model (cached per process)."""
    if name not in _OPS_CACHE:
        from workbench.latency.reference_models import build
        model, make_inputs = build(name)
        _OPS_CACHE[name] = fused_ops(model, make_inputs(30.0))
    return _OPS_CACHE[name]


def bits_for_precision(precision: str) -> int | None:
    return {"int8": 8, "fp16": 16}.get(precision)


class _Row:
    """One measurement as arrays, so a fit prices it vectorised (edge.price_ops semantics)."""

    def __init__(self, m: Measurement, dev: EdgeDevice, rt: Runtime) -> None:
        self.m, self.dev, self.rt = m, dev, rt
        ops = model_ops(m.model)
        bits = bits_for_precision(m.precision)
        weighted = [o for o in ops if o.kind in ("gemm", "conv", "dwconv") and o.weight_elems]
        model_int8 = bool(weighted) and weight_precision(bits, rt, dev) == "int8"
        clock = dev.clock_mhz * 1e6
        self.clock = clock
        self.n = max(1, min(m.threads, dev.cores))
        comp, kind, factor, elem, moved = [], [], [], [], []
        for op in ops:
            prec = op_precision(op, bits, rt, dev, model_int8)
            act_bytes = 1 if (prec == "int8" and rt.full_integer) else (
                4 if prec == "int8" else BYTES.get(prec, 4))
            if op.kind == "elementwise":
                comp.append(0.0)
                kind.append(-1)
                factor.append("")
                elem.append((op.in_elems + op.out_elems) / clock)
                moved.append((op.in_elems + op.out_elems + op.weight_elems) * act_bytes)
            else:
                comp.append(op.macs / dev.peak_macs(prec))
                kind.append(KINDS.index(op.kind))
                f = ""
                if prec == "int8" and rt.base_precision != "int8":
                    f = "int8_factor_dotprod" if "dotprod" in dev.isa else "int8_factor"
                elif prec == "fp16" and rt.base_precision != "fp16":
                    f = "fp16_factor"
                factor.append(f)
                elem.append(0.0)
                w = BYTES[prec] if op.kind != "attention" else 0
                moved.append(op.weight_elems * w + (op.in_elems + op.out_elems) * act_bytes)
        self.comp = np.array(comp)
        self.kind = np.array(kind)
        self.factor = factor
        self.elem = np.array(elem)
        self.moved = np.array(moved)
        self.n_ops = len(ops)

    def predict_ms(self, p: Mapping[str, float], scale: float | None = None) -> float:
        """Predicted ms with runtime parameters `p`; `scale` multiplies the device's compute
        rate (its fitted `efficiency_scale`; default: the device file's)."""
        speed = (1 + (self.n - 1) * p["thread_efficiency"]) * (
            self.dev.efficiency_scale if scale is None else scale)
        eff = np.array([p[f"efficiency.{k}"] for k in KINDS])
        fac = np.array([p[f] if f else 1.0 for f in self.factor])
        with np.errstate(divide="ignore", invalid="ignore"):
            compute = np.where(self.kind >= 0,
                               self.comp / (eff[np.maximum(self.kind, 0)] * fac * speed), 0.0)
        compute = compute + self.elem * p["elementwise_cycles"] / speed
        bw = self.dev.memory_bandwidth_gbs * 1e9 * p["memory_efficiency"]
        t = (np.maximum(compute, self.moved / bw).sum()
             + self.n_ops * p["overhead_cycles"] / self.clock)
        return float(t * 1e3)


def _rows(measurements: Sequence[Measurement]) -> list[_Row]:
    devs: dict[str, EdgeDevice] = {}
    rts: dict[str, Runtime] = {}
    out = []
    for m in measurements:
        dev = devs.setdefault(m.device, load_edge_device(m.device))
        rt = rts.setdefault(m.runtime, load_runtime(m.runtime))
        out.append(_Row(m, dev, rt))
    return out


def _used_params(rows: Sequence[_Row]) -> list[tuple[str, str]]:
    """(runtime, parameter) pairs that change at least one row's prediction."""
    used = set()
    for r in rows:
        rt = r.rt.name
        for k in set(r.kind.tolist()) - {-1}:
            used.add((rt, f"efficiency.{KINDS[k]}"))
        used.update((rt, f) for f in set(r.factor) if f)
        if (r.elem > 0).any():
            used.add((rt, "elementwise_cycles"))
        used.add((rt, "overhead_cycles"))
        if r.n > 1:
            used.add((rt, "thread_efficiency"))
    return sorted(used)


def _to_x(name: str, v: float) -> float:
    if name == "thread_efficiency":
        v = min(max(v, 1e-3), 1 - 1e-3)
        return math.log(v / (1 - v))
    return math.log(max(v, 1e-12))


def _from_x(name: str, x: float) -> float:
    if name == "thread_efficiency":
        return 1 / (1 + math.exp(-x))
    return math.exp(x)


def fit_runtimes(rows: Sequence[_Row]) -> dict[str, dict[str, float]]:
    """Least-squares fit of every used runtime parameter on `rows` (module docstring), and of
    each device's `efficiency_scale` (under the key DEVICE_SCALES: {device: scale}; ridge to 1:
    what a core does per cycle beyond its nominal MACs per cycle, e.g. flash wait states)."""
    from scipy.optimize import least_squares

    runtimes = {r.rt.name: r.rt for r in rows}
    params = {name: dict(rt.priors) for name, rt in runtimes.items()}
    keys = _used_params(rows)
    devices = sorted({r.dev.name for r in rows})
    scales = {d: 1.0 for d in devices}
    x0 = np.array([_to_x(k, params[rt][k]) for rt, k in keys] + [0.0] * len(devices))
    prior = x0.copy()

    def residuals(x: np.ndarray) -> np.ndarray:
        for (rt, k), v in zip(keys, x):
            params[rt][k] = _from_x(k, v)
        for d, v in zip(devices, x[len(keys):]):
            scales[d] = math.exp(v)
        res = [math.log(r.predict_ms(params[r.rt.name], scales[r.dev.name]) / r.m.ms)
               for r in rows]
        return np.concatenate([res, RIDGE * (x - prior)])

    sol = least_squares(residuals, x0, method="trf", x_scale=1.0, max_nfev=200 * len(x0))
    residuals(sol.x)
    params[DEVICE_SCALES] = dict(scales)
    return params


def _spearman(a: Sequence[float], b: Sequence[float]) -> float:
    from scipy.stats import spearmanr
    return float(spearmanr(a, b).statistic)


def lomo(rows: Sequence[_Row]) -> list[tuple[_Row, float]]:
    """(row, held-out prediction ms) for every row: refit without the row's model."""
    out = []
    for model in sorted({r.m.model for r in rows}):
        train = [r for r in rows if r.m.model != model]
        params = fit_runtimes(train)
        for r in rows:
            if r.m.model == model:
                p = params.get(r.rt.name, dict(r.rt.priors))
                out.append((r, r.predict_ms(p, params[DEVICE_SCALES].get(r.dev.name, 1.0))))
    return out


def _ape(pred: float, meas: float) -> float:
    return abs(pred - meas) / meas * 100


def summarize(pairs: Sequence[tuple[_Row, float]]) -> dict[str, Any]:
    fam: dict[str, list[float]] = {}
    dev: dict[str, list[float]] = {}
    for r, pred in pairs:
        e = _ape(pred, r.m.ms)
        fam.setdefault(r.dev.family, []).append(e)
        dev.setdefault(r.dev.name, []).append(e)
    worst = max(pairs, key=lambda rp: _ape(rp[1], rp[0].m.ms))
    return {
        "mape_pct_by_family": {k: round(statistics.mean(v), 1) for k, v in sorted(fam.items())},
        "rows_by_family": {k: len(v) for k, v in sorted(fam.items())},
        "mape_pct_by_device": {k: round(statistics.mean(v), 1) for k, v in sorted(dev.items())},
        "mape_pct_overall": round(statistics.mean(_ape(p, r.m.ms) for r, p in pairs), 1),
        "spearman": round(_spearman([p for _, p in pairs], [r.m.ms for r, _ in pairs]), 4),
        "worst": {"model": worst[0].m.model, "device": worst[0].m.device,
                  "runtime": worst[0].m.runtime, "precision": worst[0].m.precision,
                  "threads": worst[0].m.threads, "measured_ms": worst[0].m.ms,
                  "predicted_ms": round(worst[1], 3),
                  "error_pct": round(_ape(worst[1], worst[0].m.ms), 1)},
    }


def bench_published(path: str | Path | None = None) -> dict[str, Any]:
    """`workbench bench latency --published`: LOMO error per family, Spearman, worst case."""
    t0 = time.perf_counter()
    ms = load_measurements(path)
    rows = _rows(ms)
    pairs = lomo(rows)
    s = summarize(pairs)
    full = fit_runtimes(rows)
    in_sample = summarize([(r, r.predict_ms(full[r.rt.name], full[DEVICE_SCALES][r.dev.name]))
                           for r in rows])
    checks = {f"lomo_mape_{f}_le_25": s["mape_pct_by_family"].get(f, float("inf")) <= 25
              for f in REPORT_FAMILIES}
    checks["spearman_ge_0.9"] = s["spearman"] >= 0.9
    return {
        "what": "leave-one-model-out: each reference model's rows predicted by a fit on all "
                "other models' rows (runtime efficiencies, overheads, thread scaling)",
        "measurements": len(ms), "models": len({m.model for m in ms}),
        "devices": len({m.device for m in ms}), "runtimes": sorted({m.runtime for m in ms}),
        "lomo": s,
        "in_sample_mape_pct_by_family": in_sample["mape_pct_by_family"],
        "fitted_device_scales": {k: round(v, 3) for k, v in full[DEVICE_SCALES].items()},
        "checks": checks,
        "ds_cnn_int8_vs_fp32_rpi4": ds_cnn_int8_vs_fp32(),
        "seconds": round(time.perf_counter() - t0, 1),
    }


def ds_cnn_int8_vs_fp32(device: str = "rpi4_a72", runtime: str = "tflite",
                        threads: int | None = None) -> dict[str, Any]:
    """DS-CNN int8 vs fp32 on a Pi 4 with TFLite's built-in kernels (no SDOT on the A72)."""
    dev, rt = load_edge_device(device), load_runtime(runtime)
    ops = model_ops("ds_cnn_kws")
    out: dict[str, Any] = {"device": device, "runtime": runtime}
    for n in ([threads] if threads else sorted({1, dev.default_threads})):
        fp32 = total_ms(price_ops(ops, {}, dev, rt, n))
        int8 = total_ms(price_ops(ops, {o.path: 8 for o in ops}, dev, rt, n))
        out[f"threads_{n}"] = {"fp32_ms": round(fp32, 3), "int8_ms": round(int8, 3),
                               "int8_not_faster": int8 >= fp32}
    out["int8_not_faster"] = all(v["int8_not_faster"] for k, v in out.items()
                                 if k.startswith("threads_"))
    return out


def write_fit(path: str | Path | None = None) -> dict[str, Any]:
    """Fit on all rows, write fitted values into runtimes/*.json (prior kept) and the LOMO error
    per device / family into published_fit.json (the UI band)."""
    ms = load_measurements(path)
    rows = _rows(ms)
    params = fit_runtimes(rows)
    pairs = lomo(rows)
    s = summarize(pairs)
    when = datetime.now(UTC).strftime("%Y-%m-%d")
    used = set(_used_params(rows))
    scales = params.pop(DEVICE_SCALES)
    by_family: dict[str, list[float]] = {}
    for dev_name, scale in scales.items():
        by_family.setdefault(load_edge_device(dev_name).family, []).append(scale)
    app = [v for f, vs in by_family.items() if f != "mcu" for v in vs]
    for dev_name in edge_device_names():
        p = edge_devices_dir() / f"{dev_name}.json"
        data = json.loads(p.read_text())
        family = data["family"]["value"]
        if dev_name in scales:
            n = sum(1 for r in rows if r.dev.name == dev_name)
            obj = {"value": round(scales[dev_name], 5), "prior": 1.0, "mark": "fitted",
                   "source": f"fitted {when} on data/latency_measurements.jsonl ({n} rows of "
                             f"this device, joint fit): its compute rate vs the nominal "
                             f"macs_per_cycle x clock (wait states, issue width, caches); prior 1"}
        else:
            pool, what = ((by_family[family], f"the {family} devices") if family in by_family
                          else (app, "all fitted application-class (non-MCU) devices"))
            g = math.exp(statistics.fmean(math.log(v) for v in pool))
            obj = {"value": round(g, 5), "prior": 1.0, "mark": "assumed",
                   "source": f"no published rows for this device: geometric mean of the fitted "
                             f"efficiency_scale of {what} ({when})"}
        data["efficiency_scale"] = obj
        p.write_text(json.dumps(data, indent=1) + "\n")
    for name, values in params.items():
        p = runtimes_dir() / f"{name}.json"
        data = json.loads(p.read_text())
        n = sum(1 for r in rows if r.rt.name == name)
        for key, v in values.items():
            if (name, key) not in used:
                continue
            obj = data["efficiency"][key.split(".", 1)[1]] if key.startswith("efficiency.") \
                else data[key]
            obj.setdefault("prior", obj["value"])
            obj["value"] = round(v, 5)
            obj["mark"] = "fitted"
            obj["source"] = (f"fitted {when} on data/latency_measurements.jsonl ({n} rows of "
                             f"this runtime, {len(rows)} in one joint fit); prior {obj['prior']}")
        p.write_text(json.dumps(data, indent=1) + "\n")
    for name, (src, keep) in DERIVED_RUNTIMES.items():
        _derive_runtime(name, src, keep, when)
    out = {"fitted_at": when, "rows": len(rows), "lomo": s,
           "band_pct_by_family": s["mape_pct_by_family"],
           "band_pct_by_device": s["mape_pct_by_device"],
           "lomo_predictions": [
               {"model": r.m.model, "device": r.m.device, "family": r.dev.family,
                "runtime": r.m.runtime, "threads": r.m.threads, "precision": r.m.precision,
                "measured_ms": r.m.ms, "predicted_ms": round(pred, 4), "source": r.m.source}
               for r, pred in pairs]}
    (Path(__file__).parent / FIT_FILE).write_text(json.dumps(out, indent=1) + "\n")
    return out


#: Runtimes without published rows that run the same kernels as a fitted one: they take its
#: values (marked assumed), except the parameters listed (kept as assumed in their own file).
DERIVED_RUNTIMES = {
    "executorch": ("xnnpack", ()),                       # ExecuTorch's CPU backend is XNNPACK
    "tflite": ("xnnpack", ("int8_factor",)),             # fp32 via the default XNNPACK delegate;
                                                         # int8 via ruy without SDOT (assumed)
    "cmsis_nn_tflm": ("microtvm_cmsis_nn", ()),          # the same CMSIS-NN kernels
}


def _derive_runtime(name: str, src: str, keep: Sequence[str], when: str) -> None:
    s = json.loads((runtimes_dir() / f"{src}.json").read_text())
    p = runtimes_dir() / f"{name}.json"
    d = json.loads(p.read_text())

    def copy(obj: dict) -> dict:
        return {"value": obj["value"], "prior": obj["value"], "mark": "assumed",
                "source": f"assumed equal to {src}'s {obj['mark']} value ({when}): same kernels, "
                          f"no published {name} row in data/latency_measurements.jsonl"}
    for k in KINDS:
        d["efficiency"][k] = copy(s["efficiency"][k])
    for k in ("int8_factor", "int8_factor_dotprod", "fp16_factor", "elementwise_cycles",
              "overhead_cycles", "thread_efficiency", "memory_efficiency"):
        if k not in keep:
            d[k] = copy(s[k])
    p.write_text(json.dumps(d, indent=1) + "\n")


def error_band_pct(device: EdgeDevice) -> tuple[float, str]:
    """Cross-validated error for `device` (LOMO MAPE of its rows, else of its family), and what
    it is; 50 % for a family without published rows."""
    p = Path(__file__).parent / FIT_FILE
    if p.is_file():
        fit = json.loads(p.read_text())
        if device.name in fit["band_pct_by_device"]:
            return (float(fit["band_pct_by_device"][device.name]),
                    f"leave-one-model-out MAPE of {device.name}'s published rows")
        if device.family in fit["band_pct_by_family"]:
            return (float(fit["band_pct_by_family"][device.family]),
                    f"leave-one-model-out MAPE of the {device.family} family (no published "
                    f"rows for {device.name})")
    return 50.0, "no published measurements for this family: +-50 % (roofline, uncalibrated)"
