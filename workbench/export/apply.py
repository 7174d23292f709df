"""`workbench apply`: plan + model -> DIR with model.onnx, plan.json, report.json, MODEL_CARD.md.

    apply_plan(model, plan, out, options) -> report dict      (the Python entry point)
    apply_cli(args) -> exit code                              (the CLI's `apply` subcommand)

DIR is built in a staging folder next to it and moved into place at the end (`atomic`), so an
interrupted run leaves no partial DIR and no partial model.onnx. Deliverable: DIR/model.onnx.
The fp32 export is not kept (its size, hash and parity are in the report; re-create it with a
plan without quantization).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from workbench.errors import PlanError
from workbench.evaluate import EvalSet, load_eval_set
from workbench.export.atomic import staged_dir, write_bytes_atomic, write_text_atomic
from workbench.export.calibration_set import CALIB_UTTERANCES, load_calibration_set
from workbench.export.errors import OutputExistsError
from workbench.export.model_card import render
from workbench.onnx_tools.exporter import OPSET
from workbench.onnx_tools.quantize import check_int8_weights
from workbench.export.pipeline import Export, build_export, needs_calibration
from workbench.export.positions import bytes_priced_elsewhere
from workbench.export.verify import conditions_report
from workbench.models.base import input_spec
from workbench.export.report import (DELIVERABLE, FORMAT, accuracy_section, host_description,
                                     latency_section, layer_rows, ops_section, parity_section,
                                     reference_models, sessions, sha256, simulated_devices,
                                     size_section)
from workbench.paths import CALIB, DEMO_DIR, REAL_TEST, SYNTH_TEST
from workbench.plan import CompressionPlan, plan_from_file
from workbench.compress.resolution import fingerprint_of, plan_for_model, resolve
from workbench.models import DEMO_FILE, read_checkpoint_metadata
from workbench.size import size


@dataclass(frozen=True)
class ApplyOptions:
    """What `apply_plan` measures. Defaults are what `workbench apply` runs."""

    strict: bool = False
    overwrite: bool = False                   # replace a non-empty output folder (--force)
    eval_manifests: tuple[Path, ...] = (REAL_TEST, SYNTH_TEST)
    eval_limit: int | None = None             # first N utterances of each eval set
    calib_manifest: Path = CALIB
    calib_utterances: int = CALIB_UTTERANCES
    parity_utterances: int = 5
    latency_seconds: float = 5.0
    latency_repeats: int = 15
    threads: tuple[int, ...] = (1, 2)
    simulate_devices: bool = True
    model_name: str = "workbench-ctc"
    checkpoint: str | None = None             # shown in the card's "reproduce" line
    conditions: str | None = None             # a conditions grid ("default") measured in ORT
    int8_weights: str = "auto"                # int8 weight storage: auto | signed | unsigned
                                              # (workbench.onnx_tools.quantize.int8_storage)


def check_output_dir(out: Path, force: bool) -> None:
    """Refuse a file, or a non-empty folder without --force."""
    if out.exists() and not out.is_dir():
        raise OutputExistsError(f"--out {out}: is a file, not a folder; choose another path.")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise OutputExistsError(f"--out {out}: folder exists and is not empty; pass --force to "
                                f"replace it, or choose another folder.")


def check_plan_fits(plan: CompressionPlan, model: nn.Module, model_label: str) -> None:
    """Refuse a plan made for another model fingerprint, saying how to fix it."""
    if plan.model_fingerprint is None:
        return
    actual = fingerprint_of(model)
    if plan.model_fingerprint != actual:
        family = getattr(model, "family", type(model).__name__)
        raise PlanError(
            f"model_fingerprint: this plan was made for model {plan.model_fingerprint[:12]}..., "
            f"not for {model_label} ({family}, fingerprint {actual[:12]}...); re-create the plan "
            f"for {model_label} (CompressionPlan.for_model, or in the workbench UI) or pass the "
            f"matching --checkpoint.")


def read_plan(path: Path) -> CompressionPlan:
    """A plan file parsed by the plan module (errors name the line and field)."""
    if not path.is_file():
        raise PlanError(f"--plan {path}: no such plan file.")
    return plan_from_file(path)


def _eval_sets(options: ApplyOptions, model: nn.Module) -> list[EvalSet]:
    return [load_eval_set(m, limit=options.eval_limit, progress=False,
                          features=input_spec(model).kind) for m in options.eval_manifests]


def _no_stage(_stage: str) -> None:
    pass


def build_report(model: nn.Module, plan: CompressionPlan, export: Export, eval_sets: list[EvalSet],
                 calib: EvalSet | None, options: ApplyOptions,
                 original: nn.Module | None = None,
                 between: Callable[[str], None] = _no_stage) -> dict[str, Any]:
    """Verify `export` (see workbench.export.report) and collect everything into one dict.
    `between(stage)` is called before each measuring stage (see `apply_plan`)."""
    import onnx
    import onnxruntime

    ort_model, ort_fp32 = sessions(export.model, export.fp32)
    between("accuracy")
    accuracy, overall = accuracy_section(ort_model, export.sim, model, eval_sets, original)
    from workbench.export.emulation import add_emulated   # ORT's run-time input quantization
    add_emulated(accuracy, overall, export.sim, export.decisions, eval_sets)
    parity_feats = list(eval_sets[0].features[:options.parity_utterances]) if eval_sets else []
    between("parity")
    parity = parity_section(ort_model, ort_fp32, export.sim, export.structural, parity_feats)
    between("latency")
    latency = latency_section(export.model, export.fp32, options.latency_seconds,
                              options.latency_repeats, options.threads,
                              input_spec(model).channels, input_spec(model).per_second)
    between("simulated devices")
    layers = layer_rows(export.decisions, export.layer_nodes)
    predicted = size(model, plan).total_bytes
    report: dict[str, Any] = {
        "format": FORMAT, "deliverable": DELIVERABLE,
        "files": {DELIVERABLE: {"bytes": len(export.model), "sha256": sha256(export.model)},
                  "fp32 export (not kept)": {"bytes": len(export.fp32),
                                             "sha256": sha256(export.fp32)}},
        "model": {"name": options.model_name, "family": getattr(model, "family", "unknown"),
                  "fingerprint": fingerprint_of(model), "checkpoint": options.checkpoint},
        "versions": {"onnxruntime": onnxruntime.__version__, "onnx": onnx.__version__,
                     "torch": torch.__version__, "opset": OPSET},
        "host": host_description(),
        "accuracy": accuracy,
        "accuracy_all_sets": overall,
        "reference_models": reference_models(original is not None),
        "parity": parity,
        "latency_ms": latency,
        "simulated_latency": (simulated_devices(export.sim, options.latency_seconds)
                              if options.simulate_devices else {"unavailable": "not requested"}),
        "size": size_section(export.proto, len(export.model), len(export.fp32), predicted,
                             export.computed_tables, bytes_priced_elsewhere(
                                 export.computed_tables, set(model.state_dict()))),
        "ops": ops_section(export.proto, export.model),
        "layers": layers,
        "rounded_up": [r["path"] for r in layers if r["changes"]],
        "notes": list(export.notes),
        "int8_weights": (export.int8.as_dict() if export.int8 is not None else
                         {"requested": options.int8_weights, "storage": None,
                          "reason": "no int8 MatMul weights in this plan"}),
    }
    if options.conditions and eval_sets:
        between("conditions")
        report["conditions"] = conditions_report(ort_model, export.sim, model, options.conditions,
                                                 eval_sets[0].manifest)
    if calib is not None:
        report["calibration"] = {
            "manifest": str(calib.manifest), "utterances": len(calib),
            "description": f"{len(calib)} utterances of `{calib.manifest}` "
                           f"({calib.seconds:.0f} s), batch 1: activation ranges (act_bits) and "
                           f"Taylor importance (CTC-loss gradients) where the plan asks for them."}
    return report


#: The stages `apply_plan` passes to `between`, in order ("conditions" only with a grid).
STAGES = ("calibration", "export", "eval sets", "accuracy", "parity", "latency",
          "simulated devices", "conditions", "write")


def apply_plan(model: nn.Module, plan: CompressionPlan, out: Path,
               options: ApplyOptions = ApplyOptions(), *,
               original: nn.Module | None = None,
               between: Callable[[str], None] = _no_stage) -> dict[str, Any]:
    """Export `model` compressed by `plan` to folder `out` and verify it; returns the report.

    `original`: the model `model` was recovered from (the recovery's teacher), when it was;
    the report and card then give its WER next to `model`'s (`wer_original`), the baseline a
    compression is judged against. `model` is not changed. Raises PlanError / ExportError /
    DataError (WorkbenchError) on bad input, before anything is written.
    `between(stage)`: called before each stage of STAGES (after the input checks); what it raises
    stops the export there, and `out` is left as it was (the app's export job cancels this way
    and lets other model runs in between two stages: workbench/ui/export_tab.py).
    """
    out = Path(out)
    start = time.perf_counter()
    check_int8_weights(options.int8_weights)
    check_output_dir(out, options.overwrite)
    check_plan_fits(plan, model, options.checkpoint or "this model")
    calib = None
    if needs_calibration(model, plan):
        between("calibration")
        calib = load_calibration_set(options.calib_manifest, options.calib_utterances)
    between("export")
    export = build_export(model, plan, calib, strict=options.strict,
                          int8_weights=options.int8_weights)
    resolved = resolve(plan, model)
    stamped = plan if plan.model_fingerprint else plan_for_model(plan, model)   # record the model
    with staged_dir(out) as stage:
        write_text_atomic(stage / "plan.json", stamped.to_json())
        write_bytes_atomic(stage / DELIVERABLE, export.model)
        between("eval sets")
        eval_sets = _eval_sets(options, model)
        report = build_report(model, plan, export, eval_sets, calib, options, original, between)
        between("write")
        report["seconds"] = round(time.perf_counter() - start, 1)
        write_text_atomic(stage / "report.json", json.dumps(report, indent=2) + "\n")
        metadata = None
        if options.checkpoint and Path(options.checkpoint).is_file():
            metadata = read_checkpoint_metadata(options.checkpoint)
        write_text_atomic(stage / "MODEL_CARD.md", render(report, resolved, stamped.to_json(),
                                                          metadata))
    return report


def summary_lines(report: dict[str, Any]) -> list[str]:
    lines = [f"wrote {report['deliverable']} ({report['size']['model_bytes']:,} bytes)"]
    for row in report["accuracy"]:
        lines.append(f"{row['set']}: WER ORT {row['wer_ort']:.4f} vs simulated "
                     f"{row['wer_sim']:.4f} (|diff| {row['wer_abs_diff']:.4f})")
    overall = report.get("accuracy_all_sets")
    if overall:
        lines.append(f"all sets ({overall['words']} words): WER ORT {overall['wer_ort']:.4f} vs "
                     f"simulated {overall['wer_sim']:.4f} (|diff| {overall['wer_abs_diff']:.4f})")
    t1 = report["latency_ms"].get("threads_1")
    if t1:
        lines.append(f"latency 1 thread: {t1['model_ms']} ms vs fp32 {t1['fp32_ms']} ms "
                     f"({t1['speedup_vs_fp32']}x)")
    if report["rounded_up"]:
        lines.append(f"rounded up / changed: {', '.join(report['rounded_up'])}")
    int8 = report.get("int8_weights") or {}
    if int8.get("storage"):
        lines.append(f"int8 weights: {int8['reason']}")
        if int8.get("warning"):
            lines.append(f"warning: {int8['warning']}")
    return lines


def recovery_teacher(checkpoint: str | None) -> nn.Module | None:
    """The original model of a checkpoint `workbench recover` wrote (its metadata names the
    teacher: "demo" or a checkpoint path), loaded; None for any other checkpoint, or when the
    teacher's file is gone (the report then says no original was measured)."""
    if not checkpoint or not Path(checkpoint).is_file():
        return None
    from workbench.models import load_checkpoint, load_demo  # looked up per call: tests monkeypatch it
    teacher = (read_checkpoint_metadata(checkpoint).get("recovery") or {}).get("teacher")
    if teacher == "demo":
        return load_demo()
    if isinstance(teacher, str) and Path(teacher).is_file():
        return load_checkpoint(teacher)
    return None


def apply_cli(args: argparse.Namespace) -> int:
    """`workbench apply --plan P [--checkpoint C] --out DIR [--force] [--strict]
    [--int8-weights auto|signed|unsigned]`.

    Prints the report as one JSON object on stdout, a summary on stderr.
    """
    from workbench.models import load_checkpoint, load_demo  # looked up per call: tests monkeypatch it

    torch.set_num_threads(2)  # the PyTorch side (simulated WER); ORT runs with explicit threads
    plan = read_plan(Path(args.plan))
    out = Path(args.out)
    check_output_dir(out, args.force)
    model = load_checkpoint(args.checkpoint) if args.checkpoint else load_demo()
    label = f"checkpoint {args.checkpoint}" if args.checkpoint else "the demo model"
    check_plan_fits(plan, model, label)
    checkpoint = args.checkpoint or str(DEMO_DIR / DEMO_FILE)
    options = ApplyOptions(strict=args.strict, overwrite=args.force,
                           model_name=Path(args.checkpoint).stem if args.checkpoint else
                           "workbench-demo-whisper-ctc", checkpoint=checkpoint,
                           conditions=getattr(args, "conditions", None),
                           int8_weights=getattr(args, "int8_weights", "auto"))
    # Ctrl-C / SIGTERM propagate (KeyboardInterrupt): the staging folder is removed on the way
    # out and `workbench` prints one line (see workbench.cli_checks.report_error).
    report = apply_plan(model, plan, out, options, original=recovery_teacher(args.checkpoint))
    for line in summary_lines(report):
        print(line, file=sys.stderr)
    sys.stdout.write(json.dumps(report, indent=2) + "\n")
    return 0
