"""Runtime selector shipped inside a fallback bundle (`workbench bundle`) as `select_runtime.py`.

Standalone on purpose: Python 3.9+, numpy and onnxruntime only (it runs on the device, where
workbench and torch are not installed). At start-up it picks the first variant of the bundle
(primary first, then the smaller fallback) that

  1. fits the memory available now: the variant's `memory_bytes` (peak resident-memory growth
     of loading it and running one warm-up input, measured when the bundle was built) <= the
     available memory (MemAvailable from /proc/meminfo, capped by a cgroup v2 limit if any), and
  2. meets the latency budget here: the median of `runs` timed runs of a `warmup_seconds` input
     (after one untimed run, which pays the one-off allocations) <= `latency_budget_ms`.

    from select_runtime import select
    choice = select("bundle/")                  # budgets from bundle.json, memory read here
    log_probs, lengths = choice.session.run(None, feeds)

    python select_runtime.py bundle/ [--available-mb N] [--latency-ms N]   (one JSON line)

A variant that fails a check is skipped with its reason; when none fits, NoVariantFits lists
every reason (the caller decides: refuse to start, or run the last one anyway).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

BUNDLE_FORMAT = "workbench-bundle/1"
MANIFEST = "bundle.json"


class BundleError(ValueError):
    """The bundle folder or its manifest is missing or malformed, or an argument is bad."""


class NoVariantFits(RuntimeError):
    """No variant fits the available memory and the latency budget (reasons in `.reasons`)."""

    def __init__(self, reasons: list[str]) -> None:
        super().__init__("no variant of the bundle fits: " + "; ".join(reasons))
        self.reasons = reasons


@dataclass
class Selection:
    """The chosen variant, its open session, and why the others were skipped."""

    name: str
    path: Path
    session: Any                       # onnxruntime.InferenceSession
    warmup_ms: float                   # median measured here
    available_bytes: int
    skipped: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        return {"selected": self.name, "model": str(self.path),
                "warmup_ms": round(self.warmup_ms, 2), "available_mb": round(
                    self.available_bytes / 1e6, 1), "skipped": self.skipped}


def available_memory_bytes() -> int:
    """Memory a new process can use now: MemAvailable, capped by a cgroup v2 limit."""
    avail = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                avail = int(line.split()[1]) * 1024
                break
    except OSError:
        pass
    if avail is None:                                   # not Linux: total physical memory
        avail = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        used = int(Path("/sys/fs/cgroup/memory.current").read_text().strip())
        if limit != "max":
            avail = min(avail, max(int(limit) - used, 0))
    except (OSError, ValueError):
        pass
    return int(avail)


def _positive(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(
            value) or value <= 0:
        raise BundleError(f"{name}: {value!r} must be a positive finite number.")
    return float(value)


def read_manifest(bundle: str | Path) -> dict[str, Any]:
    """bundle.json, checked: format, variants with existing model files of the recorded size."""
    folder = Path(bundle)
    path = folder / MANIFEST
    if not folder.is_dir():
        raise BundleError(f"{folder}: not a folder (give the bundle folder written by "
                          f"`workbench bundle`).")
    if not path.is_file():
        raise BundleError(f"{path}: missing; is {folder} a bundle written by `workbench bundle`?")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise BundleError(f"{path}: not valid JSON ({err}).") from None
    if not isinstance(manifest, dict) or manifest.get("format") != BUNDLE_FORMAT:
        got = manifest.get("format") if isinstance(manifest, dict) else type(manifest).__name__
        raise BundleError(f"{path}: format {got!r}, expected {BUNDLE_FORMAT!r}.")
    variants = manifest.get("variants")
    if not isinstance(variants, list) or not variants:
        raise BundleError(f"{path}: 'variants' must be a non-empty list.")
    for i, v in enumerate(variants):
        if not isinstance(v, dict) or not all(k in v for k in ("name", "model", "bytes",
                                                                 "memory_bytes", "sha256")):
            raise BundleError(f"{path}: variants[{i}] needs name, model, bytes, memory_bytes, "
                              f"sha256.")
        _positive(v["memory_bytes"], f"{path}: variants[{i}].memory_bytes")
        model = folder / str(v["model"])
        if not model.is_file():
            raise BundleError(f"{model}: the model file of variant {v['name']!r} is missing.")
        if model.stat().st_size != v["bytes"]:
            raise BundleError(f"{model}: {model.stat().st_size} bytes, the manifest says "
                              f"{v['bytes']} (incomplete copy?).")
    return manifest


def _session(model: Path, threads: int) -> Any:
    import onnxruntime as ort
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    return ort.InferenceSession(str(model), opts, providers=["CPUExecutionProvider"])


def warmup_ms(session: Any, n_mels: int, frames: int, runs: int) -> float:
    """Median ms of `runs` runs on a (1, n_mels, frames) input, after one untimed run. Zeros
    cost what speech costs: dense kernels do not skip values."""
    feeds = {"features": np.zeros((1, n_mels, frames), np.float32),
             "feat_lengths": np.array([frames], np.int64)}
    session.run(None, feeds)
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        session.run(None, feeds)
        times.append(1000 * (time.perf_counter() - t))
    return statistics.median(times)


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def select(bundle: str | Path, available_bytes: int | None = None,
           latency_budget_ms: float | None = None, runs: int = 3, threads: int | None = None,
           check_hash: bool = True) -> Selection:
    """The first variant (in the manifest's order) that fits memory and meets the budget."""
    manifest = read_manifest(bundle)
    folder = Path(bundle)
    budget = _positive(latency_budget_ms if latency_budget_ms is not None
                       else manifest.get("latency_budget_ms"), "latency_budget_ms")
    avail = int(_positive(available_bytes, "available_bytes")) if available_bytes is not None \
        else available_memory_bytes()
    if isinstance(runs, bool) or not isinstance(runs, int) or runs < 1:
        raise BundleError(f"runs: {runs!r} must be an integer >= 1.")
    threads = threads if threads is not None else int(manifest.get("threads", 1))
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise BundleError(f"threads: {threads!r} must be an integer >= 1.")
    spec = manifest.get("input", {})
    n_mels, frames = int(spec.get("n_mels", 80)), int(spec.get("warmup_frames", 500))
    skipped: list[str] = []
    for v in manifest["variants"]:
        name, model = v["name"], folder / v["model"]
        if v["memory_bytes"] > avail:
            skipped.append(f"{name}: needs {v['memory_bytes'] / 1e6:.1f} MB, "
                           f"{avail / 1e6:.1f} MB available")
            continue
        if check_hash and sha256_of(model) != v["sha256"]:
            skipped.append(f"{name}: {model} does not match its sha256 (corrupt copy)")
            continue
        session = _session(model, threads)
        ms = warmup_ms(session, n_mels, frames, runs)
        if ms > budget:
            skipped.append(f"{name}: warm-up {ms:.1f} ms > budget {budget:g} ms "
                           f"({frames / 100:g} s input, {threads} thread(s))")
            del session
            continue
        return Selection(name, model, session, ms, avail, skipped)
    raise NoVariantFits(skipped)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="pick the bundle variant that fits this device now")
    p.add_argument("bundle")
    p.add_argument("--available-mb", type=float, help="override the available memory (MB)")
    p.add_argument("--latency-ms", type=float, help="override the bundle's latency budget")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--threads", type=int)
    args = p.parse_args(argv)
    try:
        choice = select(args.bundle, None if args.available_mb is None else
                        int(_positive(args.available_mb, "--available-mb") * 1e6),
                        args.latency_ms, args.runs, args.threads)
    except (BundleError, NoVariantFits) as err:
        print(json.dumps({"error": str(err)}))
        return 2 if isinstance(err, BundleError) else 1
    print(json.dumps(choice.summary()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
