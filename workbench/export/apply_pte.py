"""`workbench apply --runtime executorch`: plan + model -> DIR with model.pte, plan.json,
report.json, MODEL_CARD.md, verified in ExecuTorch's runtime (pybindings, XNNPACK, this host).

    apply_pte(model, plan, out, options) -> report dict
    apply_pte_cli(args) -> exit code

The report has the ONNX report's layout (accuracy per set, parity, latency, size, layers), with
`runtime: executorch` and the runtime's numbers under `wer_runtime` / `cer_runtime`.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from workbench.evaluate import EvalSet, evaluate, load_eval_set
from workbench.export.apply import (ApplyOptions, check_output_dir, check_plan_fits, read_plan,
                                    recovery_teacher)
from workbench.export.atomic import staged_dir, write_bytes_atomic, write_text_atomic
from workbench.export.calibration_set import load_calibration_set
from workbench.export.executorch import (DELIVERABLE_PTE, PteExport, PteSession, build_pte,
                                         delegated_ops, load_average, pte_latency_ms, runs_as,
                                         set_threads)
from workbench.export.model_card import (SET_TITLES, SOURCES, _table, front_matter, plan_table,
                                         reference_columns, reference_note)
from workbench.export.pipeline import needs_calibration
from workbench.export.report import (host_description, original_wers, pooled_wer,
                                     reference_models, sha256, worst)
from workbench.export.verify import by_length, evaluate_ort, parity_stats
from workbench.onnx_tools.runtime import CLOCK
from workbench.plan import CompressionPlan
from workbench.compress.resolution import fingerprint_of, plan_for_model, resolve
from workbench.models import DEMO_FILE
from workbench.paths import DEMO_DIR
from workbench.size import size

FORMAT = "workbench-export-report/1"


def accuracy_rows(session: PteSession, export: PteExport, model: nn.Module,
                  eval_sets: list[EvalSet], original: nn.Module | None = None
                  ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Per set: ExecuTorch WER / CER vs the simulation, the model handed to the export without
    the plan and the original model when given (report.reference_models); then pooled."""
    rows, refs, rt_h, sim_h = [], [], [], []
    for eval_set in eval_sets:
        rt = evaluate_ort(session, eval_set)        # PteSession has ORT's run(None, feeds)
        sim = evaluate(export.sim, eval_set)
        base = evaluate(model, eval_set)
        refs += list(eval_set.texts)
        rt_h += [r.hypothesis for r in rt.per_utterance]
        sim_h += [r.hypothesis for r in sim.per_utterance]
        rows.append({"set": eval_set.name, "manifest": str(eval_set.manifest),
                     "utterances": len(eval_set), "audio_seconds": round(eval_set.seconds, 2),
                     "wer_runtime": round(rt.wer, 4), "cer_runtime": round(rt.cer, 4),
                     "wer_sim": round(sim.wer, 4), "cer_sim": round(sim.cer, 4),
                     "wer_abs_diff": round(abs(rt.wer - sim.wer), 4),
                     "wer_uncompressed": round(base.wer, 4),
                     **original_wers(original, eval_set),
                     "by_length": by_length(rt.per_utterance, rt.seconds),
                     "utterances_transcribed_differently": sum(
                         a.hypothesis != b.hypothesis
                         for a, b in zip(rt.per_utterance, sim.per_utterance)),
                     "worst_utterances": worst(rt.per_utterance)})
    return rows, pooled_wer(eval_sets, refs, rt_h, sim_h, runtime_key="wer_runtime")


def pte_report(model: nn.Module, plan: CompressionPlan, export: PteExport,
               eval_sets: list[EvalSet], options: ApplyOptions,
               original: nn.Module | None = None) -> dict[str, Any]:
    import executorch
    import torchao

    set_threads(1)
    session = PteSession(export.model)
    accuracy, overall = accuracy_rows(session, export, model, eval_sets, original)
    from workbench.export.emulation import add_emulated   # XNNPACK's run-time input quantization
    add_emulated(accuracy, overall, export.sim, export.decisions, eval_sets,
                 runtime_key="wer_runtime", runtime="executorch")
    feats = list(eval_sets[0].features[:options.parity_utterances]) if eval_sets else []
    predicted = size(model, plan).total_bytes
    n = len(export.model)
    latency: dict[str, Any] = {"input_seconds": options.latency_seconds,
                               "repeats": options.latency_repeats,
                               "statistic": "median of Method.execute wall time",
                               "clock": CLOCK,
                               "load_average_1min_before": load_average()}
    for threads in options.threads:
        latency[f"threads_{threads}"] = {"model_ms": pte_latency_ms(
            export.model, threads, options.latency_seconds, options.latency_repeats)}
    return {
        "format": FORMAT, "runtime": "executorch", "deliverable": DELIVERABLE_PTE,
        "files": {DELIVERABLE_PTE: {"bytes": n, "sha256": sha256(export.model)}},
        "model": {"name": options.model_name, "family": getattr(model, "family", "unknown"),
                  "fingerprint": fingerprint_of(model), "checkpoint": options.checkpoint},
        "versions": {"executorch": getattr(executorch, "__version__", "1.5.1"),
                     "torchao": torchao.__version__, "torch": torch.__version__,
                     "backend": "XNNPACK (XnnpackPartitioner)"},
        "host": host_description(),
        "accuracy": accuracy, "accuracy_all_sets": overall,
        "reference_models": reference_models(original is not None),
        "parity": {"utterances": len(feats), **parity_stats(session, export.sim, feats),
                   "reference": "compress(model, plan) in PyTorch (the simulation)"},
        "latency_ms": latency,
        "size": {"model_bytes": n, "size_prediction_bytes": predicted,
                 "size_pred_error_pct": round(100 * abs(n - predicted) / n, 3),
                 "position_table": "computed in the graph" if export.computed_positions
                 else "none / stored"},
        "ops": delegated_ops(export.model),
        "layers": [{"path": d.path, "kind": d.kind, "planned": d.planned, "runs_as": runs_as(d),
                    "same_grid_as_simulation": d.exact,
                    "input_quantized_at_run_time": d.dynamic_activations,
                    "changes": list(d.changes)} for d in export.decisions],
        "rounded_up": [d.path for d in export.decisions if d.changes],
        "export_seconds": export.seconds,
        "notes": list(export.notes) + [
            "wer_runtime: greedy CTC transcripts of the .pte run by ExecuTorch's runtime "
            "(Python pybindings, XNNPACK delegate) on this x86 host, batch 1"],
    }


def _card_view(report: Mapping[str, Any]) -> dict[str, Any]:
    """The report with the ONNX card's key names (front_matter reads wer_ort / cer_ort)."""
    rows = [dict(r, wer_ort=r["wer_runtime"], cer_ort=r["cer_runtime"])
            for r in report["accuracy"]]
    return dict(report, accuracy=rows)


def render_pte_card(report: Mapping[str, Any], resolved: Mapping[str, Any], plan_json: str) -> str:
    """MODEL_CARD.md for the .pte (Hugging Face format, numbers from report.json)."""
    model, size, lat = report["model"], report["size"], report["latency_ms"]
    head = front_matter(_card_view(report), model["family"])
    head = head.replace("library_name: onnxruntime", "library_name: executorch").replace(
        "- onnx\n", "- executorch\n- xnnpack\n").replace("ONNX Runtime CPU", "ExecuTorch XNNPACK")
    titles, keys = reference_columns(report)
    acc = _table(("test set", "utterances", "WER (ExecuTorch)", "CER (ExecuTorch)",
                  "WER (simulated)", "|diff|", *titles),
                 [(SET_TITLES.get(r["set"], r["set"]), r["utterances"], r["wer_runtime"],
                   r["cer_runtime"], r["wer_sim"], r["wer_abs_diff"], *(r.get(k) for k in keys))
                  for r in report["accuracy"]]) + reference_note(report)
    lat_rows = [(k.split("_")[1], v["model_ms"]) for k, v in lat.items()
                if k.startswith("threads_")]
    parity = report["parity"]
    lines = [head, "", f"# {model['name']}: {model['family']} for ExecuTorch (XNNPACK)", "",
             f"`{report['deliverable']}` ({size['model_bytes']:,} bytes; inputs `features` "
             f"(1, 80, T) float32 log-mel at 100 frames/s and `feat_lengths` (1,) int64; outputs "
             f"`log_probs` (1, T', vocab) and `lengths`). Made by `workbench apply --runtime "
             f"executorch` from `plan.json`; every number is from `report.json`, measured in "
             f"the same run on {report['host']}.", "",
             "## Compression plan", "", plan_table(resolved, report["layers"]), "",
             "## Accuracy", "", acc, "",
             f"Parity, ExecuTorch vs the PyTorch simulation over {parity['utterances']} "
             f"utterances ({parity['frames']} frames): greedy token agreement "
             f"{parity['argmax_agreement']:.2%}, max |Δ log-probability| "
             f"{parity['max_abs_diff_log_probs']}.", "",
             "## Size and latency", "",
             f"File {size['model_bytes']:,} bytes vs `size()` prediction "
             f"{size['size_prediction_bytes']:,} bytes ({size['size_pred_error_pct']} % apart).",
             "", f"Measured latency (ExecuTorch runtime on this host, {lat['input_seconds']} s "
                 f"input, median of {lat['repeats']}, load average "
                 f"{lat['load_average_1min_before']}):", "",
             _table(("threads", "ms"), lat_rows), "",
             "## Known failure modes and limits", ""]
    lines += [f"- {r['path']}: {'; '.join(r['changes'])}" for r in report["layers"]
              if r["changes"]] or ["- Every layer runs as planned."]
    lines += ["- int8 layers quantize their input at run time (XNNPACK dynamic int8: one range "
              "per frame for linears, per utterance for convs); the simulation keeps inputs in "
              "float unless the plan sets act_bits."]
    emulated = [r for r in report["accuracy"] if "wer_sim_runtime_emulated" in r]
    if emulated:
        lines += ["- Simulated WER with XNNPACK's input quantization emulated (batch 1): " + "; ".join(
            f"{SET_TITLES.get(r['set'], r['set'])} {r['wer_sim_runtime_emulated']} "
            f"(|diff| from ExecuTorch {r['wer_abs_diff_emulated']})" for r in emulated) +
            ". Per layer the emulation equals the runtime; whole-model, fp32 rounding "
            "differences flip a few int8 roundings, so a single run differs by a few "
            "thousandths of WER either way."]
    lines += ["", "## Data sources and licenses", ""]
    lines += [f"- {what}: {lic}" for what, lic in SOURCES
              if model["family"] == "whisper_ctc" or not what.startswith("Whisper")]
    lines += ["", "## Reproduce", "", "```",
              "workbench apply --runtime executorch --plan plan.json --out DIR", "```", "",
              "```json", plan_json.strip(), "```", ""]
    return "\n".join(lines)


def apply_pte(model: nn.Module, plan: CompressionPlan, out: Path,
              options: ApplyOptions = ApplyOptions(), *,
              original: nn.Module | None = None) -> dict[str, Any]:
    """Export `model` compressed by `plan` to `out`/model.pte and verify it; returns the report.
    `original`: the model `model` was recovered from, if it was (as in apply_plan). `model` is
    not changed; nothing is written on bad input (WorkbenchError)."""
    out = Path(out)
    start = time.perf_counter()
    check_output_dir(out, options.overwrite)
    check_plan_fits(plan, model, options.checkpoint or "this model")
    calib = (load_calibration_set(options.calib_manifest, options.calib_utterances)
             if needs_calibration(model, plan) else None)
    export = build_pte(model, plan, calib, strict=options.strict)
    resolved = resolve(plan, model)
    stamped = plan if plan.model_fingerprint else plan_for_model(plan, model)
    eval_sets = [load_eval_set(m, limit=options.eval_limit, progress=False)
                 for m in options.eval_manifests]
    with staged_dir(out) as stage:
        write_text_atomic(stage / "plan.json", stamped.to_json())
        write_bytes_atomic(stage / DELIVERABLE_PTE, export.model)
        report = pte_report(model, plan, export, eval_sets, options, original)
        report["seconds"] = round(time.perf_counter() - start, 1)
        write_text_atomic(stage / "report.json", json.dumps(report, indent=2) + "\n")
        write_text_atomic(stage / "MODEL_CARD.md",
                          render_pte_card(report, resolved, stamped.to_json()))
    return report


def apply_pte_cli(args: argparse.Namespace) -> int:
    """`workbench apply --runtime executorch ...` (same arguments as the ONNX path)."""
    from workbench.models import load_checkpoint, load_demo  # looked up per call: tests monkeypatch it

    torch.set_num_threads(2)
    plan = read_plan(Path(args.plan))
    out = Path(args.out)
    check_output_dir(out, args.force)
    model = load_checkpoint(args.checkpoint) if args.checkpoint else load_demo()
    check_plan_fits(plan, model, f"checkpoint {args.checkpoint}" if args.checkpoint
                    else "the demo model")
    options = ApplyOptions(strict=args.strict, overwrite=args.force,
                           model_name=(Path(args.checkpoint).stem if args.checkpoint else
                                       "workbench-demo-whisper-ctc") + "-executorch",
                           checkpoint=args.checkpoint or str(DEMO_DIR / DEMO_FILE))
    report = apply_pte(model, plan, out, options, original=recovery_teacher(args.checkpoint))
    print(f"wrote {DELIVERABLE_PTE} ({report['size']['model_bytes']:,} bytes, size() "
          f"{report['size']['size_prediction_bytes']:,})", file=sys.stderr)
    for row in report["accuracy"]:
        print(f"{row['set']}: WER ExecuTorch {row['wer_runtime']:.4f} vs simulated "
              f"{row['wer_sim']:.4f} (|diff| {row['wer_abs_diff']:.4f})", file=sys.stderr)
    sys.stdout.write(json.dumps(report, indent=2) + "\n")
    return 0
