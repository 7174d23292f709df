"""`workbench verify-arm64`: run the exported ONNX model (fp32 and int8) on an emulated ARM64 CPU
and compare outputs and WER with x86 ONNX Runtime here. int8 kernels differ between ISAs (x86
VNNI / AVX2 vs ARM dot-product), so a user should know before flashing a device.

How (no binfmt_misc needed; Debian packages `debootstrap` and `qemu-user-static`):

    ROOT = ~/.cache/workbench/arm64-root: debootstrap --foreign --arch=arm64 --variant=minbase
           --include=python3 bookworm ROOT, then `dpkg -x` of every downloaded .deb
    SITE = ~/.cache/workbench/arm64-site: onnxruntime 1.22.0 + numpy aarch64 wheels (pip
           download --platform manylinux_2_28_aarch64 --only-binary=:all:), unzipped
    QEMU_CPU=cortex-a76 qemu-aarch64-static -L ROOT ROOT/usr/bin/python3.11 runner.py

onnxruntime 1.32.0's ARM64 wheel segfaults at import under this qemu; 1.22.0 runs. First run:
~1-3 minutes of downloads (cached after). Emulation is slow: ~1-2 s per 3 s utterance.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from workbench.decode import greedy_decode
from workbench.errors import WorkbenchError
from workbench.evaluate import score
from workbench.paths import cache_dir
from workbench.plan import CompressionPlan

ORT_ARM64 = "onnxruntime==1.22.0"
NUMPY_ARM64 = "numpy==2.4.6"
SUITE = "bookworm"
MIRROR = "http://deb.debian.org/debian"
CPUS = ("cortex-a72", "cortex-a76", "neoverse-n1", "max")

RUNNER = r"""
import sys, time, numpy as np, onnxruntime as ort
src, dst = sys.argv[1], sys.argv[2]
data = np.load(src + "/inputs.npz")
out, secs = {}, {}
for name in sys.argv[3:]:
    opts = ort.SessionOptions(); opts.intra_op_num_threads = 1; opts.log_severity_level = 3
    sess = ort.InferenceSession(src + "/" + name + ".onnx", opts, providers=["CPUExecutionProvider"])
    t = time.perf_counter()
    for i in range(int(data["n"])):
        f = data["f%d" % i]
        lp, n = sess.run(None, {"features": f[None], "feat_lengths": np.array([f.shape[1]], np.int64)})
        out["%s_%d" % (name, i)] = lp[0, :int(n[0])]
    secs[name] = time.perf_counter() - t
np.savez(dst, **out)
print(ort.__version__, " ".join("%s=%.3f" % kv for kv in secs.items()))
"""


class Arm64Error(WorkbenchError):
    """The ARM64 emulation could not be set up or run."""


def cache_root() -> Path:
    return Path(cache_dir())


def _need(tool: str, package: str) -> str:
    path = shutil.which(tool) or (f"/usr/sbin/{tool}" if Path(f"/usr/sbin/{tool}").exists()
                                  else None)
    if not path:
        raise Arm64Error(f"{tool}: not found; install the Debian package `{package}` "
                         f"(`make apt` as root does).")
    return path


def ensure_root(cache: Path, log=print) -> Path:
    """The ARM64 Debian root with python3.11 (built once, then reused)."""
    root = cache / "arm64-root"
    if (root / "usr/bin/python3.11").exists():
        return root
    debootstrap = _need("debootstrap", "debootstrap")
    tmp = cache / "arm64-root.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    log(f"debootstrap --foreign arm64 {SUITE} into {tmp} (downloads ~30 MB)")
    run = subprocess.run([debootstrap, "--foreign", "--arch=arm64", "--variant=minbase",
                          "--include=python3", SUITE, str(tmp), MIRROR],
                         capture_output=True, text=True)
    if run.returncode != 0:
        raise Arm64Error(f"debootstrap failed ({run.returncode}): "
                         f"{(run.stderr or run.stdout).strip().splitlines()[-1:]}")
    for deb in sorted((tmp / "var/cache/apt/archives").glob("*.deb")):
        subprocess.run(["dpkg", "-x", str(deb), str(tmp)], check=True, capture_output=True)
    if not (tmp / "usr/bin/python3.11").exists():
        raise Arm64Error(f"{tmp}: no usr/bin/python3.11 after unpacking the debs.")
    tmp.rename(root)
    return root


def ensure_site(cache: Path, log=print) -> Path:
    """onnxruntime + numpy for aarch64, unzipped into a folder put on PYTHONPATH."""
    site = cache / "arm64-site"
    if (site / "onnxruntime").is_dir() and (site / "numpy").is_dir():
        return site
    wheels = cache / "arm64-wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    log(f"pip download {ORT_ARM64} {NUMPY_ARM64} (aarch64 wheels)")
    run = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q",
                          "--platform", "manylinux_2_28_aarch64", "--platform",
                          "manylinux2014_aarch64", "--python-version", "3.11",
                          "--implementation", "cp", "--only-binary=:all:", ORT_ARM64,
                          NUMPY_ARM64, "-d", str(wheels)], capture_output=True, text=True)
    if run.returncode != 0:
        raise Arm64Error(f"pip download of the aarch64 wheels failed: "
                         f"{run.stderr.strip().splitlines()[-1:]}")
    tmp = cache / "arm64-site.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    for wheel in sorted(wheels.glob("*.whl")):
        with zipfile.ZipFile(wheel) as z:
            z.extractall(tmp)
    tmp.rename(site)
    return site


def run_emulated(root: Path, site: Path, model_dir: Path, names: list[str], cpu: str
                 ) -> tuple[dict[str, np.ndarray], str, dict[str, float]]:
    """Run RUNNER under qemu: outputs per (model, utterance), ORT version, seconds per model."""
    qemu = _need("qemu-aarch64-static", "qemu-user-static")
    out = model_dir / "arm64_out.npz"
    (model_dir / "runner.py").write_text(RUNNER)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env.update(QEMU_CPU=cpu, PYTHONPATH=str(site), OMP_NUM_THREADS="1")
    run = subprocess.run([qemu, "-L", str(root), str(root / "usr/bin/python3.11"),
                          str(model_dir / "runner.py"), str(model_dir), str(out), *names],
                         capture_output=True, text=True, env=env)
    if run.returncode != 0:
        raise Arm64Error(f"the emulated ARM64 run failed ({run.returncode}): "
                         f"{(run.stderr or run.stdout).strip()[-400:]}")
    version, *times = run.stdout.strip().splitlines()[-1].split()
    with np.load(out) as data:
        arrays = {k: data[k] for k in data.files}
    return arrays, version, {k: float(v) for k, v in (t.split("=") for t in times)}


def verify_arm64(model, plan, features: list, texts: list[str], cpu: str = "cortex-a76",
                 cache: Path | None = None, log=print) -> dict[str, Any]:
    """fp32 and `plan` ONNX exports of `model`, run on x86 ORT here and on emulated ARM64."""
    from workbench.export.pipeline import build_export
    from workbench.export.verify import ort_log_probs
    from workbench.onnx_tools.runtime import make_session

    if cpu not in CPUS:
        raise Arm64Error(f"--cpu {cpu}: unknown; choose one of {', '.join(CPUS)}.")
    cache = Path(cache) if cache else cache_root()
    cache.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    root, site = ensure_root(cache, log), ensure_site(cache, log)
    log("export fp32 and the plan to ONNX")
    exports = {"fp32": build_export(model, CompressionPlan()).model,
               "plan": build_export(model, plan).model}
    result: dict[str, Any] = {"cpu": cpu, "utterances": len(features),
                              "audio_seconds": round(sum(f.shape[-1] for f in features) / 100, 2)}
    with tempfile.TemporaryDirectory(prefix="workbench-arm64-") as tmp:
        d = Path(tmp)
        for name, blob in exports.items():
            (d / f"{name}.onnx").write_bytes(blob)
        np.savez(d / "inputs.npz", n=len(features),
                 **{f"f{i}": f.numpy().astype(np.float32) for i, f in enumerate(features)})
        log(f"run on emulated ARM64 ({cpu}, qemu-user): {len(features)} utterances x 2 models")
        arm, version, secs = run_emulated(root, site, d, list(exports), cpu)
    import onnxruntime
    result["versions"] = {"arm64_onnxruntime": version, "x86_onnxruntime": onnxruntime.__version__}
    for name, blob in exports.items():
        session = make_session(blob, 1)
        worst, worst_p, same, frames, hyp_arm, hyp_x86 = 0.0, 0.0, 0, 0, [], []
        for i, feats in enumerate(features):
            x86, n = ort_log_probs(session, feats)
            a = arm[f"{name}_{i}"]
            worst = max(worst, float(np.abs(a - x86[:n]).max()))
            # probabilities: the log-prob maximum sits on unlikely tokens (log p ~ -20)
            worst_p = max(worst_p, float(np.abs(np.exp(a) - np.exp(x86[:n])).max()))
            same += int((a.argmax(-1) == x86[:n].argmax(-1)).sum())
            frames += n
            for lp, hyps in ((a, hyp_arm), (x86[:n], hyp_x86)):
                hyps.extend(greedy_decode(torch.from_numpy(lp[None]), torch.tensor([len(lp)])))
        wer_arm, wer_x86 = score(list(texts), hyp_arm)[0], score(list(texts), hyp_x86)[0]
        result[name] = {"max_abs_diff_log_probs": round(worst, 5),
                        "max_abs_diff_probs": round(worst_p, 5),
                        "argmax_agreement": round(same / max(frames, 1), 5),
                        "wer_arm64": round(wer_arm, 4), "wer_x86": round(wer_x86, 4),
                        "wer_abs_diff": round(abs(wer_arm - wer_x86), 4),
                        "emulated_seconds": round(secs[name], 2),
                        "bytes": len(exports[name])}
    result["plan_definition"] = json.loads(plan.to_json())   # "plan" holds the measurements
    result["notes"] = ["ARM64 outputs from onnxruntime " + version + " under qemu-user "
                       "(emulated: timings say nothing about a real device); x86 outputs from "
                       "the onnxruntime of this venv; greedy CTC, batch 1, one thread"]
    result["seconds"] = round(time.perf_counter() - start, 1)
    return result


def cmd_verify_arm64(args: argparse.Namespace) -> int:
    from workbench.evaluate import load_eval_set  # looked up per call: tests monkeypatch it
    from workbench.export.apply import read_plan
    from workbench.models import load_checkpoint, load_demo  # looked up per call: tests monkeypatch it
    from workbench.paths import REAL_TEST  # looked up per call: tests monkeypatch it

    if args.limit < 1:
        raise Arm64Error(f"--limit {args.limit}: must be at least 1 utterance.")
    if args.cpu not in CPUS:
        raise Arm64Error(f"--cpu {args.cpu}: unknown; choose one of {', '.join(CPUS)}.")
    torch.set_num_threads(2)
    if args.plan:
        plan = read_plan(Path(args.plan))
    else:
        from workbench.export.reference_plans import int8_plan
        plan = int8_plan()
    model = load_checkpoint(args.checkpoint) if args.checkpoint else load_demo()
    eval_set = load_eval_set(Path(args.manifest) if args.manifest else REAL_TEST,
                             limit=args.limit, progress=False)
    result = verify_arm64(model, plan, list(eval_set.features), list(eval_set.texts),
                          cpu=args.cpu, log=lambda m: print(f"[verify-arm64] {m}",
                                                            file=sys.stderr, flush=True))
    result["manifest"] = str(eval_set.manifest)
    sys.stdout.write(json.dumps(result, indent=2) + "\n")
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("verify-arm64", help="run the fp32 and int8 ONNX exports on an emulated "
                                            "ARM64 CPU (qemu-user) and compare with x86")
    p.add_argument("--plan", help="plan JSON (default: int8 per channel everywhere)")
    p.add_argument("--checkpoint", help="model checkpoint (default: the demo model)")
    p.add_argument("--manifest", help="utterances to compare on (default: held-out real speech)")
    p.add_argument("--limit", type=int, default=10, help="first N utterances (default 10)")
    p.add_argument("--cpu", default="cortex-a76", help=f"emulated core: {', '.join(CPUS)}")
    p.add_argument("--json", action="store_true", help="(output is always one JSON object)")
    p.set_defaults(func=cmd_verify_arm64)
