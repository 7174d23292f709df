"""`workbench bench byo --json`: graph-found structured pruning vs Torch-Pruning, same plan.

Models (random weights, seed 0; built here, nothing downloaded):
    conformer     torchaudio Conformer, 4 layers, d 144, 4 heads, FFN 576, depthwise kernel 31
    wav2vec2      torchaudio wav2vec2_model, 4 layers, d 256, 4 heads, FFN 1024
    whisper_hf    a Whisper encoder written in the Hugging Face layout (safetensors +
                  config.json) to a temporary folder and read back with load_whisper_hf
Plan (inside the encoder blocks): 50 % FFN neurons, 25 % heads, 25 % conv-module channels.
Per model and tool: parameters before / after, the hand-computed expected count (formulas
below, from the configs), forward runs, ONNX export (TorchScript exporter, fixed shapes) + ORT
max |diff| vs PyTorch, seconds to prune (structure discovery included). Torch-Pruning 1.6.1 is
given the same ratios per layer (FFN first Linear 0.5, the conv module's first pointwise conv
0.25, q/k/v or nn.MultiheadAttention 0.25 with num_heads, prune_num_heads=True and
head_pruning_ratio 0.25); every other Linear / Conv1d except depthwise convs is an ignored
layer (they write the residual stream or sit outside the blocks).
"""
from __future__ import annotations

import copy
import io
import os
import re
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torchaudio.models import Conformer, wav2vec2_model

from workbench.graph import count_params, discover, prune
from workbench.graph.surgery import count_to_remove
from workbench.models import build_model, load_whisper_hf

_IN_BLOCK = re.compile(r"(^|\.)(conformer_layers|layers|blocks)\.\d+\.")
AMOUNTS = {"neurons": 0.5, "heads": 0.25, "channels": 0.25}


def _conformer() -> tuple[nn.Module, tuple, int]:
    d, h, ff, k, n = 144, 4, 576, 31, 4
    torch.manual_seed(0)
    model = Conformer(input_dim=d, num_heads=h, ffn_dim=ff, num_layers=n,
                      depthwise_conv_kernel_size=k).eval()
    neurons, heads, c = count_to_remove(ff, 0.5), count_to_remove(h, 0.25), count_to_remove(d, 0.25)
    dh = d // h
    per_layer = (2 * (neurons * (d + 1) + neurons * d)          # two FFNs: fc1 rows, fc2 cols
                 + 3 * heads * dh * (d + 1) + heads * dh * d     # packed in_proj, out_proj cols
                 + 2 * c * (d + 1) + c * (k + 1) + 2 * c + c * d)  # GLU rows, dw, BN, pw2
    example = (torch.randn(2, 200, d), torch.tensor([200, 160]))
    return model, example, count_params(model) - n * per_layer


def _wav2vec2() -> tuple[nn.Module, tuple, int]:
    d, h, ff, n = 256, 4, 1024, 4
    torch.manual_seed(0)
    model = wav2vec2_model(
        extractor_mode="group_norm", extractor_conv_layer_config=[(128, 10, 5), (128, 3, 2)],
        extractor_conv_bias=False, encoder_embed_dim=d, encoder_projection_dropout=0.0,
        encoder_pos_conv_kernel=32, encoder_pos_conv_groups=16, encoder_num_layers=n,
        encoder_num_heads=h, encoder_attention_dropout=0.0, encoder_ff_interm_features=ff,
        encoder_ff_interm_dropout=0.0, encoder_dropout=0.0, encoder_layer_norm_first=False,
        encoder_layer_drop=0.0, aux_num_out=29).eval()
    neurons, heads = count_to_remove(ff, 0.5), count_to_remove(h, 0.25)
    dh = d // h
    per_layer = neurons * (d + 1) + neurons * d + 3 * heads * dh * (d + 1) + heads * dh * d
    # waveform only: torchaudio's own padding path (x[mask] = 0 with lengths) does not
    # survive the TorchScript ONNX export (ORT shape inference fails on its Where node)
    example = (torch.randn(1, 8000),)
    return model, example, count_params(model) - n * per_layer


def _whisper_hf() -> tuple[nn.Module, tuple, int]:
    from workbench.byo.hf_layout import write_whisper_hf
    d, h, ff, n = 128, 4, 512, 4
    torch.manual_seed(0)
    source = build_model("whisper_ctc", d_model=d, n_heads=h, n_layers=n, d_ff=ff,
                         n_ctx=100).eval()
    with tempfile.TemporaryDirectory() as folder:
        write_whisper_hf(source, Path(folder))
        model = load_whisper_hf(folder).eval()
    model.ctc_head.load_state_dict(source.ctc_head.state_dict())  # the CTC head is not in HF files
    neurons, heads = count_to_remove(ff, 0.5), count_to_remove(h, 0.25)
    dh = d // h
    # q, v: rows + bias; k: rows (Whisper's k_proj has no bias); out_proj: columns
    per_layer = (neurons * (d + 1) + neurons * d + 2 * heads * dh * (d + 1) + heads * dh * d
                 + heads * dh * d)
    example = (torch.randn(2, 80, 200), torch.tensor([200, 160]))
    return model, example, count_params(model) - n * per_layer


MODELS: dict[str, Callable[[], tuple[nn.Module, tuple, int]]] = {
    "conformer": _conformer, "wav2vec2": _wav2vec2, "whisper_hf": _whisper_hf}


def _ort_diff(model: nn.Module, example: tuple) -> float:
    import onnxruntime as ort
    buf = io.BytesIO()
    names = [f"in{i}" for i in range(len(example))]
    torch.onnx.export(model, example, buf, dynamo=False, opset_version=17, input_names=names)
    session = ort.InferenceSession(buf.getvalue(), providers=["CPUExecutionProvider"])
    got = session.run(None, {n: t.numpy() for n, t in zip(names, example, strict=True)})[0]
    with torch.no_grad():
        ref = model(*example)
    ref = ref[0] if isinstance(ref, tuple) else ref
    return float(np.abs(got - ref.numpy()).max())


def _changed_shapes(before: nn.Module, after: nn.Module) -> dict[str, str]:
    """Parameters of the first encoder block whose shape changed: 'name': 'before -> after'."""
    old = {n: tuple(p.shape) for n, p in before.named_parameters()}
    out = {}
    for n, p in after.named_parameters():
        match = _IN_BLOCK.search(n)
        if match and n[match.end() - 2:match.end()] == "0." and n in old and \
                old[n] != tuple(p.shape):
            out[n] = f"{list(old[n])} -> {list(p.shape)}"
    return out


def _outcome(model: nn.Module, example: tuple, expected: int, seconds: float,
             original: nn.Module) -> dict[str, Any]:
    out: dict[str, Any] = {"params_after": count_params(model), "expected_params": expected,
                           "seconds_to_prune": round(seconds, 3),
                           "block0_shapes_changed": _changed_shapes(original, model)}
    out["exact"] = out["params_after"] == expected
    try:
        with torch.no_grad():
            model(*example)
        out["forward"] = "ok"
    except Exception as err:  # noqa: BLE001 - reported, it is the measurement
        out["forward"] = f"error: {type(err).__name__}: {str(err)[:200]}"
        return out
    try:
        out["ort_max_abs_diff"] = _ort_diff(model, example)
        out["ort_parity_1e-4"] = out["ort_max_abs_diff"] < 1e-4
    except Exception as err:  # noqa: BLE001
        out["onnx"] = f"error: {type(err).__name__}: {str(err)[:200]}"
    return out


def run_workbench(model: nn.Module, example: tuple, expected: int) -> dict[str, Any]:
    start = time.perf_counter()
    structure = discover(model, example)
    amounts = {g.path: AMOUNTS[g.kind] for g in structure.groups if _IN_BLOCK.search(g.path)}
    pruned = prune(model, structure, amounts, example)
    seconds = time.perf_counter() - start
    result = _outcome(pruned.model, example, expected, seconds, model)
    result["groups"] = {k: sum(1 for g in structure.groups if g.kind == k and g.path in amounts)
                        for k in AMOUNTS}
    result["refused"] = [f"{r.path or '<root>'}: {r.reason}" for r in structure.refusals]
    return result


def run_torch_pruning(model: nn.Module, example: tuple, expected: int) -> dict[str, Any]:
    try:
        import torch_pruning as tp
    except ImportError:
        return {"outcome": "torch_pruning not installed (pip install torch-pruning==1.6.1)"}
    original, model = model, copy.deepcopy(model)
    ratios: dict[nn.Module, float] = {}
    heads: dict[nn.Module, int] = {}
    keep_free: set[int] = set()
    for name, m in model.named_modules():
        if not _IN_BLOCK.search(name + "."):
            continue
        if isinstance(m, nn.MultiheadAttention):
            heads[m] = m.num_heads
            ratios[m] = 0.25
        elif isinstance(m, nn.Linear) and re.search(r"(ffn\d\.sequential\.1|intermediate_dense|"
                                                    r"mlp\.fc1|\.fc1)$", name):
            ratios[m] = 0.5
        elif isinstance(m, nn.Conv1d) and name.endswith("conv_module.sequential.0"):
            ratios[m] = 0.25
        elif isinstance(m, nn.Linear) and re.search(r"(q_proj|k_proj|v_proj)$", name):
            parent = model.get_submodule(name.rpartition(".")[0])
            heads[m] = getattr(parent, "num_heads", getattr(parent, "n_heads", 1))
            ratios[m] = 0.25
        elif isinstance(m, nn.Conv1d) and m.groups > 1 and m.groups == m.in_channels:
            keep_free.add(id(m))  # depthwise: pruned with the conv module's first pointwise
    ignored = [m for m in model.modules()
               if isinstance(m, (nn.Linear, nn.Conv1d)) and m not in ratios and m not in heads
               and id(m) not in keep_free]
    start = time.perf_counter()
    try:
        pruner = tp.pruner.MetaPruner(
            model, example, importance=tp.importance.MagnitudeImportance(p=2),
            pruning_ratio=0.0, pruning_ratio_dict=ratios, num_heads=heads,
            prune_num_heads=True, prune_head_dims=False, head_pruning_ratio=0.25,
            ignored_layers=ignored, global_pruning=False)
        pruner.step()
    except Exception as err:  # noqa: BLE001 - Torch-Pruning's failure is the measurement
        return {"outcome": f"error while pruning: {type(err).__name__}: {str(err)[:200]}",
                "seconds_to_prune": round(time.perf_counter() - start, 3)}
    result = _outcome(model, example, expected, time.perf_counter() - start, original)
    result["outcome"] = "pruned" if result.get("forward") == "ok" else "pruned model fails"
    return result


def bench_byo(args: Any = None) -> dict[str, Any]:
    """The JSON of `workbench bench byo` (see module doc)."""
    torch.set_num_threads(1)
    load = os.getloadavg()[0]
    out: dict[str, Any] = {"plan": AMOUNTS, "load_avg_1min_before": round(load, 2),
                           "threads": 1, "models": {}}
    for name, build in MODELS.items():
        model, example, expected = build()
        before = count_params(model)
        out["models"][name] = {
            "params_before": before,
            "workbench": run_workbench(model, example, expected),
            "torch_pruning": run_torch_pruning(model, example, expected),
        }
        out["models"][name]["removed_fraction_expected"] = round(1 - expected / before, 4)
    out["load_avg_1min_after"] = round(os.getloadavg()[0], 2)
    out["note"] = ("seconds_to_prune includes the structure discovery (one recorded run plus "
                   "one pruned-vs-masked check run per group); random weights; one thread. "
                   f"Expected counts: formulas in {Path(__file__).name}.")
    return out
