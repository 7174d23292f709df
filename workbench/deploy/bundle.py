"""`workbench bundle`: a primary export and a smaller fallback, both verified, plus the runtime
selector that picks one at start-up on the device.

    build_bundle(model, out, budget, primary, fallback, ...) -> manifest dict

    OUT/
      bundle.json          budgets, device, and per variant: file, bytes, sha256, memory_bytes
                           (measured), simulated device latency, host latency, WER ORT vs simulated
      primary/             a `workbench apply` folder (model.onnx, report.json, MODEL_CARD.md, plan)
      fallback/            the same for the smaller plan
      select_runtime.py    workbench.deploy.selector, standalone (numpy + onnxruntime)

Checks before any export (cheap: arithmetic and the latency simulator): the fallback must be
smaller than the primary (`size()` bytes), and must meet the budget on the device as simulated
(latency within the budget, weights + activations within the memory). The primary may be over
the simulated budget: the bundle says so, and the selector decides on the device with measured
numbers. `memory_bytes` is measured here: peak resident-memory growth of a fresh process that
creates the ONNX Runtime session and runs one warm-up input (x86 ORT; an ARM build of ORT
allocates about the same, the weights dominate).
"""
from __future__ import annotations

import difflib
import json
import math
import subprocess
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from torch import nn

from workbench.deploy.selector import BUNDLE_FORMAT, MANIFEST
from workbench.errors import WorkbenchError
from workbench.latency.cost import predict_latency
from workbench.latency.predict import canonical_device, edge_names
from workbench.models.base import input_spec
from workbench.plan import CompressionPlan
from workbench.size import size

SELECTOR_NAME = "select_runtime.py"
#: Longest warm-up / budget input (s): the demo encoder's 1,500 positions hold 30 s.
MAX_SECONDS = 30.0

MEMORY_PROBE = r"""
import sys, numpy as np, onnxruntime as ort
def kb(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1])
model, n_mels, frames, threads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
before = kb("VmRSS:")
opts = ort.SessionOptions(); opts.intra_op_num_threads = threads; opts.log_severity_level = 3
s = ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])
s.run(None, {"features": np.zeros((1, n_mels, frames), np.float32),
             "feat_lengths": np.array([frames], np.int64)})
print((kb("VmHWM:") - before) * 1024)
"""


class BundleInputError(WorkbenchError):
    """A bad budget, device or plan pair for `workbench bundle`."""


@dataclass(frozen=True)
class Budget:
    """What the device offers: memory for the model (MB), a latency budget (ms) for an input of
    `seconds` audio, on `device` (a latency-simulator device) with `threads` threads."""

    memory_mb: float
    latency_ms: float
    device: str = "rpi5"
    seconds: float = 5.0
    threads: int = 1

    def checked(self) -> Budget:
        for name, value in (("--memory-mb", self.memory_mb), ("--latency-ms", self.latency_ms)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or \
                    not math.isfinite(value) or value <= 0:
                raise BundleInputError(f"{name} {value!r}: must be a positive finite number.")
        if isinstance(self.seconds, bool) or not isinstance(self.seconds, (int, float)) or \
                not math.isfinite(self.seconds) or not 0.1 <= self.seconds <= MAX_SECONDS:
            raise BundleInputError(f"--seconds {self.seconds!r}: must be within 0.1..{MAX_SECONDS:g} "
                                   f"(the warm-up input and the budget's audio length).")
        if isinstance(self.threads, bool) or not isinstance(self.threads, int) or \
                not 1 <= self.threads <= 256:
            raise BundleInputError(f"--threads {self.threads!r}: must be an integer in 1..256.")
        device = canonical_device(str(self.device))
        if device not in edge_names():
            close = difflib.get_close_matches(str(self.device), list(edge_names()), n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise BundleInputError(f"--device {self.device!r}: unknown edge device{hint}; "
                                   f"`workbench latency --list` lists them.")
        return replace(self, device=device)


def simulate(model: nn.Module, plan: CompressionPlan, budget: Budget, *,
             size_bytes: int | None = None) -> dict[str, Any]:
    """Bytes (size(); pass `size_bytes` when already computed), simulated device latency (ONNX
    Runtime on the device) and memory (weights bytes + the simulator's activation peak)."""
    report = predict_latency(model, budget.device, budget.seconds, plan=plan,
                             runtime="onnxruntime", threads=budget.threads)
    # exact bytes; the simulator prices int4 as int8
    weights = size(model, plan).total_bytes if size_bytes is None else size_bytes
    memory = weights + report.memory.activations_bytes
    return {"size_bytes": weights,
            "device": report.device, "runtime": report.runtime,
            "latency_ms": round(report.total_ms, 2), "band_pct": report.error_band_pct,
            "memory_bytes": int(memory),
            "meets_latency": report.total_ms <= budget.latency_ms,
            "meets_memory": memory <= budget.memory_mb * 1e6,
            "source": report.source}


def measure_memory_bytes(model_path: Path, n_mels: int, frames: int, threads: int) -> int:
    """Peak RSS growth of a fresh process loading `model_path` in ORT and running it once on
    zero features (1, n_mels, frames) (a waveform model: n_mels 1, frames = samples)."""
    run = subprocess.run([sys.executable, "-c", MEMORY_PROBE, str(model_path), str(n_mels),
                          str(frames), str(threads)], capture_output=True, text=True)
    if run.returncode != 0:
        raise WorkbenchError(f"{model_path}: the memory probe failed: "
                             f"{run.stderr.strip()[-300:]}")
    return int(run.stdout.strip().splitlines()[-1])


def _variant(name: str, folder: Path, report: dict[str, Any], sim: dict[str, Any],
             memory: int, budget: Budget, probe: tuple[int, int]) -> dict[str, Any]:
    from workbench.export.report import DELIVERABLE
    accuracy = [{"set": r["set"], "wer_ort": r["wer_ort"], "wer_sim": r["wer_sim"],
                 "abs_diff": r["wer_abs_diff"],
                 **({"wer_sim_runtime_emulated": r["wer_sim_runtime_emulated"]}
                    if "wer_sim_runtime_emulated" in r else {})} for r in report["accuracy"]]
    host = report["latency_ms"].get(f"threads_{budget.threads}") or next(
        v for k, v in report["latency_ms"].items() if k.startswith("threads_"))
    return {"name": name, "model": f"{name}/{DELIVERABLE}",
            "bytes": report["files"][DELIVERABLE]["bytes"],
            "sha256": report["files"][DELIVERABLE]["sha256"],
            "memory_bytes": memory,
            "memory_source": f"measured here: peak RSS growth of a fresh process that loads "
                             f"the model in ONNX Runtime and runs one warm-up input of "
                             f"{budget.seconds:g} s, features (1, {probe[0]}, {probe[1]})",
            "meets_memory_budget_measured": memory <= budget.memory_mb * 1e6,
            "simulated": sim,
            "host_latency_ms": host["model_ms"],
            "accuracy": accuracy,
            "parity_max_abs_diff_log_probs": report["parity"].get("max_abs_diff_log_probs"),
            "plan": f"{name}/plan.json", "report": f"{name}/report.json"}


def build_bundle(model: nn.Module, out: Path, budget: Budget, primary: CompressionPlan,
                 fallback: CompressionPlan, fallback_model: nn.Module | None = None,
                 options: Any = None, force: bool = False, log=print) -> dict[str, Any]:
    """Export and verify `primary` and `fallback` into `out` with bundle.json and the selector.

    `fallback_model` (default `model`) lets the fallback come from another checkpoint (e.g. a
    pruned, recovered one from `workbench recover`). Nothing is written when a check fails; the
    folder is staged and renamed into place at the end.
    """
    from workbench.export.apply import ApplyOptions, apply_plan, check_output_dir
    from workbench.export.atomic import staged_dir, write_text_atomic
    from workbench.export.report import DELIVERABLE

    budget = budget.checked()
    out = Path(out)
    check_output_dir(out, force)
    fallback_model = fallback_model if fallback_model is not None else model
    options = options or ApplyOptions()
    options = replace(options, threads=tuple(sorted({*options.threads, budget.threads})),
                      latency_seconds=budget.seconds)
    p_bytes = size(model, primary).total_bytes
    f_bytes = size(fallback_model, fallback).total_bytes
    if f_bytes >= p_bytes:
        raise BundleInputError(
            f"fallback plan: {f_bytes:,} bytes is not smaller than the primary's "
            f"{p_bytes:,}; choose a smaller fallback (e.g. int4_everywhere, or a pruned "
            f"plan from `workbench search` / `workbench recover`).")
    log(f"simulate both plans on {budget.device} ({budget.seconds:g} s input)")
    f = simulate(fallback_model, fallback, budget, size_bytes=f_bytes)
    if not (f["meets_latency"] and f["meets_memory"]):
        raise BundleInputError(
            f"fallback plan: simulated {f['latency_ms']:.1f} ms (+-{f['band_pct']:.0f} %) and "
            f"{f['memory_bytes'] / 1e6:.1f} MB on {budget.device}, over the budget of "
            f"{budget.latency_ms:g} ms / {budget.memory_mb:g} MB: no safe fallback; raise the "
            f"budget or choose a smaller / faster fallback plan.")
    p = simulate(model, primary, budget, size_bytes=p_bytes)
    sims = {"primary": p, "fallback": f}
    spec = input_spec(model)      # log-mel frames at 100/s, or 16 kHz samples
    probe = (spec.channels, spec.length(budget.seconds))
    variants = []
    with staged_dir(out) as stage:
        for name, m, plan in (("primary", model, primary), ("fallback", fallback_model,
                                                           fallback)):
            log(f"export and verify the {name} plan")
            report = apply_plan(m, plan, stage / name, options)
            memory = measure_memory_bytes(stage / name / DELIVERABLE, *probe, budget.threads)
            variants.append(_variant(name, stage / name, report, sims[name], memory, budget,
                                     probe))
        if variants[1]["bytes"] >= variants[0]["bytes"]:
            raise BundleInputError(f"fallback: its exported file ({variants[1]['bytes']:,} "
                                   f"bytes) is not smaller than the primary's "
                                   f"({variants[0]['bytes']:,}); choose a smaller fallback.")
        manifest = {
            "format": BUNDLE_FORMAT,
            "device": budget.device, "memory_budget_mb": budget.memory_mb,
            "latency_budget_ms": budget.latency_ms, "threads": budget.threads,
            "input": {"n_mels": probe[0], "warmup_frames": probe[1],
                      "warmup_seconds": budget.seconds, "kind": spec.kind,
                      "per_second": spec.per_second},
            "selection": "first variant (primary, then fallback) whose memory_bytes fits the "
                         "available memory and whose measured warm-up median meets "
                         "latency_budget_ms (select_runtime.py)",
            "primary_meets_simulated_budget": bool(p["meets_latency"] and p["meets_memory"]),
            "variants": variants,
        }
        write_text_atomic(stage / MANIFEST, json.dumps(manifest, indent=2) + "\n")
        selector = Path(__file__).with_name("selector.py").read_text()
        write_text_atomic(stage / SELECTOR_NAME, selector)
    return manifest
