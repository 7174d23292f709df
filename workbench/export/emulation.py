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

ExecuTorch's XNNPACK dynamic int8 ("qd8") quantizes differently: per ROW, signed int8
(`fake_quant_xnnpack_qd8`): one range per frame for linears, one per utterance for 2-D convs
(the exported graph says per tensor; ExecuTorch lowers it to XNNPACK's per-row convert). Per
layer this emulation equals ExecuTorch's runtime to <= 3e-7 relative on all 28 int8 layers of
the demo fed real speech (tests/test_pte_emulation.py checks it on a small model). Finding it
also exposed two weight-grid mismatches of the .pte, fixed in `executorch` (the .pte now holds
the simulation's int8 weights exactly): XNNPACKQuantizer's weight observer floors scales at
2**-12 (35 of the demo's 15,133 channels were coarser), and torchao rounds w * (1 / s) where the
simulation rounds w / s (near-ties land one level apart). Whole-model the same float-rounding
cascade as for ORT remains (fp32 ops of the runtime vs PyTorch ~1e-5 apart flip a few int8
input roundings, which grow layer by layer): per-frame log-probabilities of the .pte and the
emulation stay nearly as far apart as the .pte and the plain simulation (median per-frame max
|diff| 0.32 vs 0.45, 8 real prompts), but greedy transcripts differ on fewer utterances
(demo int8: 15 vs 21 of 122 real, 20 vs 40 of 150 synthetic). Demo int8 WER (all utterances,
batch 1, load 10-12): .pte 0.3121 / 0.2474 (real / synthetic), plain simulation 0.3121 / 0.2426,
XNNPACK-emulated 0.3121 / 0.2498, and with the features nudged by -2..2 float32 ulps
0.3121-0.3135 / 0.2474-0.2498 (mean 0.3124 / 0.2488): on synthetic speech the run-time input
quantization costs ~0.006 WER that the plain simulation does not see and the emulation does.

    emulate_ort_dynamic(sim, decisions) -> model      ORT: per-tensor uint8 input hooks
    emulate_xnnpack_dynamic(sim, decisions) -> model  ExecuTorch XNNPACK: per-row int8 input hooks
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


def fake_quant_xnnpack_qd8(x: torch.Tensor, nonbatch_dims: int = 1) -> torch.Tensor:
    """XNNPACK's dynamic int8 ("qd8") input quantization + dequantize, per row.

    A row is the last `nonbatch_dims` axes: 1 for a fully connected layer (every frame's input
    vector has its own range - per token, although the exported graph says per tensor: ExecuTorch
    lowers its per-tensor dynamic quantize to XNNPACK's per-row convert, see executorch
    backends/xnnpack/operators/node_visitor.py "We use per_token quantization for per_tensor"),
    3 for a 2-D convolution (one range per image, i.e. per utterance at batch 1). Per row, in
    float32 like XNNPACK's xnn_qd8_asymmetric_quantization_params (src/xnnpack/quantization.h)
    and its f32-qs8 convert (xnn_compute_f32_qd8_convert):

        rmin = min(min x, 0), rmax = max(max x, 0), m = 255 / (rmax - rmin)   (m = 1 if equal)
        zp = -128 - rmin*m if (-128 + rmin*m) + (127 + rmax*m) > 0 else 127 - rmax*m,
             clamped to [-128, 127], rounded half to even
        dequantization scale s = 1 / m;  q = clamp(rint(x * (1 / s)) + zp, -128, 127)
        x' = (q - zp) * s
    """
    if x.dim() < nonbatch_dims:
        raise ValueError(f"qd8 emulation: input of {x.dim()} dims, rows of {nonbatch_dims}")
    shape = x.shape
    flat = x.reshape(-1, int(torch.tensor(shape[x.dim() - nonbatch_dims:]).prod()))
    rmin = flat.amin(dim=1).clamp(max=0.0)
    rmax = flat.amax(dim=1).clamp(min=0.0)
    one = torch.ones_like(rmin)
    m = torch.where(rmin == rmax, one, torch.full_like(rmin, 255.0) / (rmax - rmin))
    dmin, dmax = rmin * m, rmax * m
    zp = torch.where((dmin - 128.0) + (dmax + 127.0) > 0, -128.0 - dmin, 127.0 - dmax)
    zp = torch.round(zp.clamp(-128.0, 127.0))
    s = one / m
    mult = one / s
    q = torch.round(flat * mult[:, None]).clamp(-128.0 - zp[:, None], 127.0 - zp[:, None])
    return (q * s[:, None]).reshape(shape)


def _qd8_rows_hook(_module: nn.Module, args: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    return (fake_quant_xnnpack_qd8(args[0], 1),) + tuple(args[1:])


def _qd8_image_hook(_module: nn.Module, args: tuple[torch.Tensor, ...]
                    ) -> tuple[torch.Tensor, ...]:
    # Conv1d input (B, C, T) is XNNPACK's (B, 1, T, C) image: one range per batch element.
    return (fake_quant_xnnpack_qd8(args[0], args[0].dim() - 1),) + tuple(args[1:])


def emulate_xnnpack_dynamic(sim: nn.Module, decisions: Sequence[Decision]) -> nn.Module:
    """A copy of `sim` whose layers that the .pte runs as XNNPACK dynamic int8 quantize their
    input as XNNPACK does (per frame for linears, per utterance for convs). `sim` is not changed.
    Depthwise convs are kept fp32 by the export (their decision says fp32): not hooked."""
    out = copy.deepcopy(sim).eval()
    for d in decisions:
        if d.method == "int8_dynamic" and d.kind in ("linear", "conv"):
            out.get_submodule(d.path).register_forward_pre_hook(
                _qd8_rows_hook if d.kind == "linear" else _qd8_image_hook)
    return out


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
                 eval_sets: Sequence[EvalSet], runtime_key: str = "wer_ort",
                 runtime: str = "onnxruntime") -> None:
    """Add the runtime-emulated simulated WER to the report's accuracy rows (in place):
    `wer_sim_runtime_emulated` and its |difference| from the runtime's WER, per set and pooled.
    `runtime`: "onnxruntime" (per-tensor uint8 inputs) or "executorch" (XNNPACK qd8, per row).
    Nothing is added when no layer runs as dynamic int8."""
    if not any(d.method == "int8_dynamic" and d.kind == "linear" for d in decisions):
        return
    emulate = {"onnxruntime": emulate_ort_dynamic, "executorch": emulate_xnnpack_dynamic}
    if runtime not in emulate:
        raise ValueError(f"runtime emulation: unknown runtime {runtime!r}, one of {sorted(emulate)}")
    emulated = emulate[runtime](sim, decisions)
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
