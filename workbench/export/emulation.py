"""Runtime emulation: the simulation plus what the runtime does to activations that the plan does
not say. ONNX Runtime's dynamic int8 MatMul (DynamicQuantizeLinear -> MatMulInteger) quantizes
each MatMul input at run time, per tensor, to uint8:

    lo = min(min x, 0), hi = max(max x, 0), scale = (hi - lo) / 255,
    zero_point = clamp(round(-lo / scale), 0, 255), x' = (clamp(round(x / scale) + zp, 0, 255) - zp) * scale

(onnxruntime DynamicQuantizeLinear; round half to even). "Per tensor" is per call: one range over
every frame of one utterance at batch 1, so the emulated model must be run one utterance at a
time (a padded batch would share one range across utterances and padding).

What it reaches (demo model, int8 everywhere, both held-out sets, measured 2026-12-02 at
load 15-24): per layer the emulation IS ORT's arithmetic - each of the 26 int8
layers, fed the fp32 input ORT saw, gives ORT's output within 1e-4 relative (without the input
rounding: 0.02-1.9 off); tests/test_export_emulation.py checks this on a tiny model. Whole-model,
frames whose greedy token differs from ORT drop from 1.13 % to 0.70 % (real prompts) and 1.28 %
to 0.95 % (synthetic). But the per-set WER gap does not shrink: ORT's fp32 ops (LayerNorm,
softmax, GELU) differ from PyTorch's by ~1e-6, enough to flip a few uint8 roundings, which then
propagate; the emulation with its layer inputs nudged by 1-2 float32 ulps - equally valid -
already spreads the WER by 0.007 (real, 705 words) and 0.006 (synthetic, 1,245 words). So a
per-set |emulated - ORT| <= 0.005 cannot be promised by any simulation that does not reproduce
ORT's float rounding bit for bit; the report shows both the plain and the emulated figure.

    emulate_ort_dynamic(sim, decisions) -> model      a deep copy with input fake-quant hooks
    evaluate_batch1(model, eval_set) -> (wer, hypotheses)
"""
from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import nn

from workbench.decode import greedy_decode
from workbench.evaluate import EvalSet, score
from workbench.export.decisions import Decision


def fake_quant_dynamic_uint8(x: torch.Tensor) -> torch.Tensor:
    """ONNX Runtime's DynamicQuantizeLinear + dequantize, over the whole tensor."""
    lo = torch.clamp(x.min(), max=0.0)
    hi = torch.clamp(x.max(), min=0.0)
    scale = (hi - lo) / 255.0
    if float(scale) == 0.0:
        return x
    zero_point = torch.clamp(torch.round(-lo / scale), 0, 255)
    q = torch.clamp(torch.round(x / scale) + zero_point, 0, 255)
    return (q - zero_point) * scale


def _hook(_module: nn.Module, args: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    return (fake_quant_dynamic_uint8(args[0]),) + tuple(args[1:])


def emulate_ort_dynamic(sim: nn.Module, decisions: Sequence[Decision]) -> nn.Module:
    """A copy of `sim` whose layers that ORT runs as dynamic int8 quantize their input per tensor
    at every call, as ORT does. `sim` is not changed."""
    out = copy.deepcopy(sim).eval()
    for d in decisions:
        if d.method == "int8_dynamic" and d.kind == "linear":
            out.get_submodule(d.path).register_forward_pre_hook(_hook)
    return out


@torch.inference_mode()
def evaluate_batch1(model: nn.Module, eval_set: EvalSet) -> tuple[float, list[str]]:
    """Greedy CTC WER, one utterance at a time (what per-tensor run-time ranges need)."""
    hyps = []
    for feats in eval_set.features:
        log_probs, lengths = model(feats[None], torch.tensor([feats.shape[-1]]))
        hyps.extend(greedy_decode(log_probs, lengths))
    return score(list(eval_set.texts), hyps)[0], hyps


def add_emulated(rows: list[dict], overall: dict, sim: nn.Module, decisions: Sequence[Decision],
                 eval_sets: Sequence[EvalSet], runtime_key: str = "wer_ort") -> None:
    """Add the runtime-emulated simulated WER to the report's accuracy rows (in place):
    `wer_sim_runtime_emulated` and its |difference| from the runtime's WER, per set and pooled.
    Nothing is added when no layer runs as dynamic int8."""
    if not any(d.method == "int8_dynamic" and d.kind == "linear" for d in decisions):
        return
    emulated = emulate_ort_dynamic(sim, decisions)
    refs: list[str] = []
    hyps: list[str] = []
    for row, eval_set in zip(rows, eval_sets):
        wer, h = evaluate_batch1(emulated, eval_set)
        row["wer_sim_runtime_emulated"] = round(wer, 4)
        row["wer_abs_diff_emulated"] = round(abs(row[runtime_key] - wer), 4)
        refs += list(eval_set.texts)
        hyps += h
    if overall and refs:
        wer = score(refs, hyps)[0]
        overall["wer_sim_runtime_emulated"] = round(wer, 4)
        overall["wer_abs_diff_emulated"] = round(abs(overall[runtime_key] - wer), 4)
