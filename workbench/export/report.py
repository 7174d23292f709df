"""The verification report of an export (DIR/report.json), assembled from measurements.

Every number is measured in the same run on the files being delivered:
- accuracy: WER / CER of the ORT model (batch 1, greedy CTC) per eval set and per utterance
  length, next to the simulated WER (`workbench.evaluate.evaluate(compress(model, plan))`);
- parity: max |log_probs ORT - log_probs PyTorch| on a few utterances, for the final model
  against the simulation, and for the fp32 export against the structurally compressed model;
- latency: ORT median ms on a fixed input, 1 and 2 threads, fp32 vs the deliverable;
- size: file bytes vs `workbench.size.size(model, plan)` (minus the position table the export
  computes instead of storing, see `positions`);
- ops: op counts of the file and of the graph ORT runs after its fusions, quantized ones apart;
- per layer: what the plan asked, how it runs, what was rounded up.
"""
from __future__ import annotations

import hashlib
import os
import platform
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from typing import Any

from torch import nn

from workbench.errors import WorkbenchError
from workbench.evaluate import EvalSet, evaluate, score
from workbench.export.decisions import Decision
from workbench.export.positions import ComputedTable
from workbench.export.verify import by_length, evaluate_ort, parity_stats, quantized_op_counts
from workbench.onnx_tools.graph_map import op_counts
from workbench.onnx_tools.runtime import CLOCK, latency_ms, make_session, runtime_op_counts

FORMAT = "workbench-export-report/1"
DELIVERABLE = "model.onnx"


def sha256(blob: bytes) -> str:
    return hashlib.sha256(blob).hexdigest()


def layer_rows(decisions: Sequence[Decision], layer_nodes: Mapping[str, Sequence[str]]
               ) -> list[dict[str, Any]]:
    return [{"path": d.path, "kind": d.kind, "planned": d.planned, "runs_as": d.runs_as,
             "onnx_nodes": list(layer_nodes.get(d.path, ())), "same_grid_as_simulation": d.exact,
             "input_quantized_at_run_time": d.dynamic_activations, "changes": list(d.changes)}
            for d in decisions]


def reference_models(original_given: bool) -> dict[str, str]:
    """What the report's reference WERs are (report["reference_models"]): after a recovery the
    model handed to the export is the *recovered* float model, not the one the user started
    from, so a recovery that hurt the float model would hide its damage in `wer_uncompressed`."""
    return {
        "wer_uncompressed": "the model handed to the export, without this plan (after a "
                            "recovery: the recovered float model)",
        "wer_original": ("the original model, before any recovery or compression (given to "
                         "the export as `original`)" if original_given else
                         "not measured: no original model was given (apply_plan(..., "
                         "original=model); `workbench apply --checkpoint` finds the teacher a "
                         "recovery checkpoint names), so the model handed to the export is the "
                         "reference")}


def original_wers(original: nn.Module | None, eval_set: EvalSet) -> dict[str, float]:
    """{"wer_original", "cer_original"} of the original model on `eval_set` ({} without one)."""
    if original is None:
        return {}
    r = evaluate(original, eval_set)
    return {"wer_original": round(r.wer, 4), "cer_original": round(r.cer, 4)}


def accuracy_section(ort_session: Any, sim: nn.Module, model: nn.Module,
                     eval_sets: Sequence[EvalSet], original: nn.Module | None = None
                     ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Per eval set: ORT WER/CER, simulated WER/CER, |difference|, the WER of `model` (the one
    handed to the export) without the plan, of `original` (before recovery) when given
    (`reference_models`), and the ORT model's WER by utterance length; then one corpus WER over
    all sets (more words: greedy CTC flips near-tie characters under tiny perturbations, so a
    single set of ~700 words moves by a few words either way)."""
    rows = []
    refs: list[str] = []
    ort_hyps: list[str] = []
    sim_hyps: list[str] = []
    for eval_set in eval_sets:
        ort_eval = evaluate_ort(ort_session, eval_set)
        sim_eval = evaluate(sim, eval_set)
        base = evaluate(model, eval_set)
        refs += list(eval_set.texts)
        ort_hyps += [r.hypothesis for r in ort_eval.per_utterance]
        sim_hyps += [r.hypothesis for r in sim_eval.per_utterance]
        rows.append({"set": eval_set.name, "manifest": str(eval_set.manifest),
                     "utterances": len(eval_set), "audio_seconds": round(eval_set.seconds, 2),
                     "wer_ort": round(ort_eval.wer, 4), "cer_ort": round(ort_eval.cer, 4),
                     "wer_sim": round(sim_eval.wer, 4), "cer_sim": round(sim_eval.cer, 4),
                     "wer_abs_diff": round(abs(ort_eval.wer - sim_eval.wer), 4),
                     "wer_uncompressed": round(base.wer, 4), "cer_uncompressed": round(base.cer, 4),
                     **original_wers(original, eval_set),
                     "by_length": by_length(ort_eval.per_utterance, ort_eval.seconds),
                     "utterances_transcribed_differently": sum(
                         a.hypothesis != b.hypothesis
                         for a, b in zip(ort_eval.per_utterance, sim_eval.per_utterance)),
                     "worst_utterances": worst(ort_eval.per_utterance)})
    return rows, pooled_wer(eval_sets, refs, ort_hyps, sim_hyps)


def pooled_wer(eval_sets: Sequence[EvalSet], refs: Sequence[str], runtime_hyps: Sequence[str],
               sim_hyps: Sequence[str], runtime_key: str = "wer_ort") -> dict[str, Any]:
    """WER over all sets pooled (corpus WER, not the mean of the sets'): runtime vs simulation
    under `runtime_key` / "wer_sim"; {} when there is no reference."""
    if not refs:
        return {}
    w_rt, w_sim = score(refs, runtime_hyps)[0], score(refs, sim_hyps)[0]
    return {"sets": [e.name for e in eval_sets], "utterances": len(refs),
            "words": sum(len(r.split()) for r in refs), runtime_key: round(w_rt, 4),
            "wer_sim": round(w_sim, 4), "wer_abs_diff": round(abs(w_rt - w_sim), 4)}


def worst(per: Sequence[Any], n: int = 3) -> list[dict[str, Any]]:
    """The n utterances with the highest word error rate (ties: more errors first)."""
    ranked = sorted(per, key=lambda r: (-(r.word_errors / max(r.words, 1)), -r.word_errors, r.id))
    return [{"id": r.id, "reference": r.reference, "hypothesis": r.hypothesis,
             "word_errors": r.word_errors, "words": r.words} for r in ranked[:n]]


def tensor_bytes(proto: Any) -> int:
    """Bytes of the initializers' data (what `workbench.size` prices; the rest of the file is
    the graph: nodes, names, shapes)."""
    total = 0
    for init in proto.graph.initializer:
        if init.raw_data:
            total += len(init.raw_data)
        else:  # typed fields (small tensors written by helper.make_tensor)
            total += init.ByteSize()
    return total


def size_section(proto: Any, model_bytes: int, fp32_bytes: int, predicted_bytes: int | None,
                 computed: Sequence[ComputedTable], saved: int = 0) -> dict[str, Any]:
    """File sizes and the size() prediction error (the prediction minus `saved`: bytes of tables
    size() prices that the export computes instead of storing); also tensor data vs graph."""
    data = tensor_bytes(proto)
    out: dict[str, Any] = {"model_bytes": model_bytes, "tensor_bytes": data,
                           "graph_overhead_bytes": model_bytes - data,
                           "fp32_export_bytes": fp32_bytes,
                           "ratio_vs_fp32_export": round(fp32_bytes / model_bytes, 3),
                           "computed_tables": [asdict(t) for t in computed]}
    if predicted_bytes is not None:
        pred = predicted_bytes - saved
        out.update(size_prediction_bytes=predicted_bytes,
                   size_prediction_minus_computed_tables=pred,
                   size_pred_error_pct=round(100 * abs(model_bytes - pred) / model_bytes, 3),
                   tensor_pred_error_pct=round(100 * abs(data - pred) / data, 3))
    return out


def simulated_devices(sim: nn.Module, seconds: float) -> dict[str, Any]:
    """Simulated latency per device profile (workbench.latency), with method and error band."""
    try:
        from workbench.latency import known_devices, layer_table, predict_latency
        table = layer_table(sim, seconds)
        out = {}
        for device in known_devices():
            rep = predict_latency(table, device, seconds)
            out[device] = {"ms": round(rep.total_ms, 2), "error_band_pct": rep.error_band_pct,
                           "low_ms": round(rep.low_ms, 2), "high_ms": round(rep.high_ms, 2),
                           "real_time_factor": round(rep.real_time_factor, 4),
                           "runtime": rep.runtime, "calibrated": rep.calibrated,
                           "source": rep.source}
        return {"method": "roofline cost model (workbench.latency) over the compressed model's "
                          "layer table", "audio_seconds": seconds, "devices": out}
    except (WorkbenchError, ImportError, AttributeError, TypeError, ValueError) as err:
        return {"unavailable": f"{type(err).__name__}: {err}"}


def host_description() -> str:
    """CPU model and core count (timings depend on both, and on what else runs)."""
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            model = next((line.split(":", 1)[1].strip() for line in f
                          if line.startswith("model name")), model)
    except OSError:
        pass
    return f"{model}, {os.cpu_count()} logical cores, {platform.system()} {platform.machine()}"


def latency_section(model: bytes, fp32: bytes, seconds: float, repeats: int,
                    threads: Sequence[int], n_mels: int = 80, rate: int = 100
                    ) -> dict[str, Any]:
    """Measured ORT latency on `seconds` of input: (n_mels, seconds x rate) features (log-mel
    at 100 frames/s; a waveform model: n_mels 1, rate 16,000)."""
    out: dict[str, Any] = {"input_seconds": seconds, "repeats": repeats,
                           "statistic": "median of session.run wall time", "clock": CLOCK,
                           "load_average_1min_before": round(os.getloadavg()[0], 2)}
    for n in threads:
        ms = latency_ms({"model": model, "fp32": fp32}, threads=n, seconds=seconds,
                        repeats=repeats, n_mels=n_mels, rate=rate)
        out[f"threads_{n}"] = {"model_ms": ms["model"], "fp32_ms": ms["fp32"],
                               "speedup_vs_fp32": round(ms["fp32"] / ms["model"], 3)}
    return out


def ops_section(proto: Any, model: bytes) -> dict[str, Any]:
    counts = op_counts(proto)
    runtime = runtime_op_counts(model)
    return {"file": counts, "file_quantized": quantized_op_counts(counts),
            "runtime_after_ort_fusions": runtime,
            "runtime_quantized": quantized_op_counts(runtime)}


def parity_section(ort_session: Any, fp32_session: Any, sim: nn.Module, structural: nn.Module,
                   features: Sequence[Any]) -> dict[str, Any]:
    fp32 = parity_stats(fp32_session, structural, features)
    return {"utterances": len(features), **parity_stats(ort_session, sim, features),
            "reference": "compress(model, plan) in PyTorch (the simulation)",
            "fp32_export_max_abs_diff_log_probs": fp32["max_abs_diff_log_probs"],
            "fp32_export_argmax_agreement": fp32["argmax_agreement"],
            "fp32_reference": "compress(model, plan without quantization) in PyTorch"}


def sessions(model: bytes, fp32: bytes) -> tuple[Any, Any]:
    """1-thread sessions (evaluation runs one utterance at a time on one thread)."""
    return make_session(model, 1), make_session(fp32, 1)
