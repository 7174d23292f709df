"""Measure an exported model in ONNX Runtime: transcripts and WER, output parity, latency, ops.

Everything runs ORT's CPU provider, one utterance at a time (batch 1, the production case),
with explicit thread counts. Sessions, op counts and latency come from the ONNX toolbox
(workbench.onnx_tools.runtime: one timing harness and one clock, shared with the host latency
calibration). `conditions_report`: the same WER under the conditions grid (noise, rooms, speed,
telephone band) on degraded copies of a set (workbench.conditions).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from workbench.conditions import condition_sets
from workbench.decode import greedy_decode
from workbench.evaluate import EvalSet, UtteranceResult, evaluate, score
from workbench.features import FRAMES_PER_SECOND
from workbench.onnx_tools.runtime import feature_feeds

if TYPE_CHECKING:
    import onnxruntime

#: Ops that compute on integers or carry quantized tensors (what "runs quantized" means).
QUANTIZED_OPS = ("MatMulInteger", "DynamicQuantizeLinear", "DynamicQuantizeMatMul",
                 "MatMulIntegerToFloat", "MatMulNBits", "QLinearMatMul", "QLinearConv",
                 "ConvInteger", "QuantizeLinear", "DequantizeLinear", "QGemm")
#: Utterance length buckets of the accuracy table, in seconds: [lo, hi).
LENGTH_BUCKETS = ((0.0, 2.0), (2.0, 4.0), (4.0, 8.0), (8.0, float("inf")))


def ort_log_probs(session: onnxruntime.InferenceSession, features: torch.Tensor
                  ) -> tuple[np.ndarray, int]:
    """(T', vocab) log-probs and the valid length for one (n_mels, T) utterance."""
    log_probs, lengths = session.run(None, feature_feeds(features))
    return log_probs[0], int(lengths[0])


@dataclass(frozen=True)
class OrtEval:
    """WER / CER of the ORT model on one eval set, with per-utterance results and durations."""

    name: str
    wer: float
    cer: float
    utterances: int
    per_utterance: tuple[UtteranceResult, ...]
    seconds: tuple[float, ...]          # audio duration of each utterance


def evaluate_ort(session: onnxruntime.InferenceSession, eval_set: EvalSet) -> OrtEval:
    """Greedy CTC transcripts of every utterance (batch 1), scored like workbench.evaluate."""
    hyps = []
    for feats in eval_set.features:
        log_probs, n = ort_log_probs(session, feats)
        hyps.extend(greedy_decode(torch.from_numpy(log_probs[None]), torch.tensor([n])))
    wer, cer, per = score(eval_set.texts, hyps, eval_set.ids)
    return OrtEval(eval_set.name, wer, cer, len(eval_set), per,
                   tuple(f.shape[-1] / FRAMES_PER_SECOND for f in eval_set.features))


def conditions_report(ort_session: onnxruntime.InferenceSession, sim: torch.nn.Module,
                      original: torch.nn.Module, grid: str, manifest: Path,
                      seed: int = 0) -> dict[str, Any]:
    """The conditions grid measured on the exported model (`workbench apply --conditions`): per
    condition, WER / CER of the ONNX Runtime session beside the PyTorch simulation of the plan
    and the uncompressed model, on the same degraded features as `evaluate_conditions` (the
    shared feature cache). report["conditions"]; the model card's "Accuracy by condition"."""
    sets, stats = condition_sets(grid, manifest, seed=seed, progress=False)
    rows = []
    for cond, es in sets:
        ort_eval = evaluate_ort(ort_session, es)
        sim_eval = evaluate(sim, es)
        base = evaluate(original, es)
        rows.append({"condition": cond.name, "utterances": len(es),
                     "wer_ort": round(ort_eval.wer, 4), "cer_ort": round(ort_eval.cer, 4),
                     "wer_sim": round(sim_eval.wer, 4),
                     "wer_uncompressed": round(base.wer, 4),
                     "cer_uncompressed": round(base.cer, 4)})
    return {"grid": grid, "set": Path(manifest).parent.name, "seed": seed, "rows": rows,
            "skipped": list(stats["skipped"]),
            "source": "measured: greedy CTC of the ONNX model (onnxruntime), the PyTorch "
                      "simulation and the uncompressed model on seeded degraded copies of the "
                      "set (workbench.conditions)"}


def by_length(per: Sequence[UtteranceResult], seconds: Sequence[float]) -> list[dict[str, Any]]:
    """Word error rate per length bucket: errors / reference words of the utterances in it."""
    rows = []
    for lo, hi in LENGTH_BUCKETS:
        chosen = [r for r, s in zip(per, seconds) if lo <= s < hi]
        words = sum(r.words for r in chosen)
        rows.append({"seconds": f"{lo:g}-{hi:g}" if hi != float("inf") else f">={lo:g}",
                     "utterances": len(chosen),
                     "wer": (round(sum(r.word_errors for r in chosen) / words, 4)
                             if words else None)})
    return rows


@torch.inference_mode()
def max_abs_diff(session: onnxruntime.InferenceSession, model: torch.nn.Module,
                 features: Sequence[torch.Tensor]) -> float:
    """max |log_probs ORT - log_probs PyTorch| over the valid frames of `features` (batch 1)."""
    model = model.eval()
    worst = 0.0
    for feats in features:
        ref, ref_len = model(feats[None], torch.tensor([feats.shape[-1]]))
        out, n = ort_log_probs(session, feats)
        if n != int(ref_len[0]):
            return float("inf")
        worst = max(worst, float(np.abs(out[:n] - ref[0, :n].numpy()).max()))
    return worst


@torch.inference_mode()
def parity_stats(session: onnxruntime.InferenceSession, model: torch.nn.Module,
                 features: Sequence[torch.Tensor]) -> dict[str, float]:
    """ORT vs PyTorch over the valid frames of `features`: max |Δ log_probs| (dominated by
    unlikely tokens, log p ~ -20, where int8 noise moves values most), max |Δ probabilities|,
    and the fraction of frames whose greedy (argmax) token is the same."""
    model = model.eval()
    worst_log, worst_p, same, frames = 0.0, 0.0, 0, 0
    for feats in features:
        ref, _ = model(feats[None], torch.tensor([feats.shape[-1]]))
        out, n = ort_log_probs(session, feats)
        ref_n = ref[0, :n].numpy()
        worst_log = max(worst_log, float(np.abs(out[:n] - ref_n).max()))
        worst_p = max(worst_p, float(np.abs(np.exp(out[:n]) - np.exp(ref_n)).max()))
        same += int((out[:n].argmax(-1) == ref_n.argmax(-1)).sum())
        frames += n
    return {"max_abs_diff_log_probs": round(worst_log, 6), "max_abs_diff_probs": round(worst_p, 6),
            "argmax_agreement": round(same / max(frames, 1), 6), "frames": frames}


def quantized_op_counts(counts: Mapping[str, int]) -> dict[str, int]:
    return {op: n for op, n in counts.items() if op in QUANTIZED_OPS}
