"""A plan applied to the full Whisper model, exported and verified: per-layer bits in ONNX Runtime,
a parity report and a model card, like `workbench apply` for the CTC models.

    apply_whisper(model, tokenizer, plan, out, eval_sets) -> report dict
    DIR/encoder.onnx, cross_kv.onnx, decoder.onnx, plan.json, report.json, MODEL_CARD.md

Path: structure (pruning, low rank) in PyTorch -> fp32 ONNX of the three graphs
(`whisper_onnx.export_whisper`) -> each weight node tagged with the module it came from ->
`ort_quantize.quantize_graph` per graph with the plan's layers found in that graph (the same
per-layer decisions as the CTC export: 8 bit int8 dynamic per channel, 4 / 2 bit MatMulNBits,
16 bit fp16 weights, other widths rounded up and reported).

Why modules are found by weight, not by node name: the TorchScript exporter names nodes after the
modules *called*, and the decoder calls methods of its attention modules (`keys_values`,
`attend`), so `decoder.blocks.0.attn.q_proj` and `...cross_attn.q_proj` both export as
"/decoder/blocks.0/q_proj*". Each MatMul / Conv weight initializer equals one module's weight (or
its transpose) exactly, so matching values is unambiguous; a weight two modules share is refused.
The decoder's input embedding (a Gather on the tied weight) reads its rows from the output
projection's stored weight after quantization (`onnx_tools.tied_embedding.share_tied_embedding`:
int8 per channel or per tensor, fp16, MatMulNBits unpacked in the graph, or fp32), so the tied
table is stored once, as `workbench.size` prices it, and ORT embeds tokens with the
simulation's rounded values.

Storage vs `workbench.size` (`whisper_size_section`): the initializers of the three graphs are
exactly the priced weights (equal on tiny.en int8); the files add graph structure (~0.3 MB).
"""
from __future__ import annotations

import json
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from workbench.compress import compress
from workbench.compress.resolution import fingerprint_of, plan_for_model, resolve
from workbench.errors import ArgumentError, PlanError
from workbench.evaluate import score
from workbench.export.errors import ExportError
from workbench.export.whisper_onnx import GRAPHS, OrtWhisper, export_whisper, ort_transcribe
from workbench.onnx_tools.tied_embedding import share_tied_embedding, tied_pairs, value_key
from workbench.size import size

FORMAT = "workbench-whisper-export-report/1"


def weight_index(model: nn.Module) -> dict[str, str | None]:
    """value key -> module path of every Linear / Conv weight (and its transpose); None when
    two modules hold the same values (ambiguous)."""
    out: dict[str, str | None] = {}
    for path, m in model.named_modules():
        if isinstance(m, nn.Linear | nn.Conv1d):
            w = m.weight.detach().float().numpy()
            keys = {value_key(w)} | ({value_key(w.T)} if w.ndim == 2 else set())
            for k in keys:
                out[k] = None if k in out and out[k] != path else path
    return out


def tag_modules(proto, index: dict[str, str | None]) -> None:
    """Set MODULE_KEY metadata on every MatMul / Conv / Gather whose constant input is a module's
    weight (in place)."""
    from onnx import numpy_helper

    from workbench.onnx_tools.exporter import MODULE_KEY
    inits = {i.name: i for i in proto.graph.initializer}
    for node in proto.graph.node:
        slot = 0 if node.op_type == "Gather" else 1
        if node.op_type not in ("MatMul", "Conv", "Gather") or len(node.input) <= slot:
            continue
        init = inits.get(node.input[slot])
        if init is None:
            continue
        path = index.get(value_key(numpy_helper.to_array(init)))
        if path:
            del node.metadata_props[:]
            entry = node.metadata_props.add()
            entry.key, entry.value = MODULE_KEY, path


def _embedding_as_simulated(proto, sim: nn.Module) -> None:
    """The Gather tables still stored apart (an input embedding with no tied projection, or one
    `share_tied_embedding` could not read) take the simulation's rounded weight values."""
    from onnx import numpy_helper

    from workbench.onnx_tools.exporter import node_module
    inits = {i.name: i for i in proto.graph.initializer}
    for node in proto.graph.node:
        path = node_module(node) if node.op_type == "Gather" else None
        if not path or node.input[0] not in inits:
            continue
        module = sim.get_submodule(path)
        if getattr(module, "weight_bits", 32) >= 32:
            continue
        old = inits[node.input[0]]
        new = numpy_helper.from_array(module.weight.detach().float().numpy(), old.name)
        old.CopyFrom(new)


def check_exportable(model: nn.Module, plan) -> dict:
    """The plan's quantized layers: path -> (kind, QuantConfig); refuses activation
    quantization (static QDQ needs a calibration reader this export does not have yet)."""
    from workbench.export.structural import layer_quant
    layers = layer_quant(model, plan)
    static = sorted(p for p, (_, q) in layers.items() if q.act_bits is not None)
    if static:
        raise PlanError(f"act_bits 8 on {static[:3]}{' ...' if len(static) > 3 else ''}: the "
                        f"Whisper export quantizes weights only (ORT dynamic int8 rounds inputs "
                        f"at run time anyway); remove act_bits from these layers.")
    return layers


def build_whisper_export(model: nn.Module, plan, work: Path, strict: bool = False,
                         int8_weights: str = "auto") -> dict:
    """fp32 and plan-quantized graphs in `work` (fp32/, model/), the simulation and the decisions.

    fp32/ is the unquantized reference with the embedding tied like model/; the quantizers run
    on fp32_untied/ (a Gather reading a MatMul weight would keep ORT from replacing it).

    `model` is not changed."""
    import onnx

    from workbench.onnx_tools.graph_map import nodes_of_layer, weight_nodes
    from workbench.onnx_tools.exporter import to_bytes
    from workbench.export.ort_quantize import plan_decisions, quantize_graph
    from workbench.export.structural import structural_plan

    layers = check_exportable(model, plan)
    plan_decisions(layers, strict)                     # refuse early, before the slow part
    structural = compress(model, structural_plan(plan)).eval()
    sim = compress(model, plan).eval()
    fp32 = export_whisper(structural, work / "fp32_untied")
    index = weight_index(structural)
    reference = {}                       # the fp32 deliverable: tied embedding stored once too
    (work / "fp32").mkdir(parents=True, exist_ok=True)
    for name, path in fp32.items():
        proto = onnx.load(str(path))
        share_tied_embedding(proto, tied_pairs(proto))
        reference[name] = work / "fp32" / path.name
        reference[name].write_bytes(to_bytes(proto))
    out_dir = work / "model"
    out_dir.mkdir(parents=True, exist_ok=True)
    decisions: dict[str, Any] = {}
    layer_nodes: dict[str, list[str]] = {}
    notes: list[str] = []
    paths = {}
    int8 = None                          # the int8 weight storage (the same in every graph)
    for name in GRAPHS:
        proto = onnx.load(str(fp32[name]))
        tag_modules(proto, index)
        pairs = tied_pairs(proto)
        nodes = weight_nodes(proto)
        here = {p: v for p, v in layers.items() if nodes_of_layer(nodes, p, v[0])}
        if here:
            q = quantize_graph(proto, here, None, None, strict=strict, int8_weights=int8_weights)
            proto = q.proto
            int8 = q.int8 or int8
            for d in q.decisions:
                decisions[d.path] = d
            for p, ns in q.layer_nodes.items():
                layer_nodes.setdefault(p, []).extend(f"{name}:{n}" for n in ns)
            notes += [f"{name}: {n}" for n in q.notes]
        notes += [f"{name}: {n}" for n in share_tied_embedding(proto, pairs)]
        _embedding_as_simulated(proto, sim)    # only Gathers left with a table of their own
        paths[name] = out_dir / f"{name}.onnx"
        paths[name].write_bytes(to_bytes(proto))
    missing = sorted(set(layers) - set(decisions))
    if missing:
        raise ExportError(f"plan layers {missing[:5]} have no weight node in the exported "
                          f"Whisper graphs; were they removed by the structural part of the plan?")
    return {"fp32": reference, "model": paths, "sim": sim, "structural": structural,
            "decisions": tuple(decisions[p] for p in layers), "layer_nodes": layer_nodes,
            "notes": notes, "int8": int8}


def _transcripts(ort_model, tokenizer, eval_set) -> list[str]:
    secs = [f.shape[-1] / 100 for f in eval_set.features]
    return ort_transcribe(ort_model, tokenizer, eval_set.features, secs)


def accuracy_rows(ort_model, sim: nn.Module, original: nn.Module, tokenizer, eval_sets,
                  dynamic_paths: set[str]) -> tuple[list[dict], dict]:
    """Per set: ORT WER / CER vs the simulation (weights on the plan's grid + ORT's run-time
    uint8 rounding of the inputs of its int8-dynamic layers) and the uncompressed model."""
    from workbench.export.report import pooled_wer, worst
    from workbench.export.verify import by_length
    from workbench.whisper_eval import evaluate_whisper, ort_dynamic_activations

    rows, refs, ort_all, sim_all = [], [], [], []
    for es in eval_sets:
        hyps = _transcripts(ort_model, tokenizer, es)
        wer, cer, per = score(es.texts, hyps, es.ids)
        with ort_dynamic_activations(sim, dynamic_paths):
            s = evaluate_whisper(sim, tokenizer, es)
        base = evaluate_whisper(original, tokenizer, es)
        secs = [f.shape[-1] / 100 for f in es.features]
        refs += list(es.texts)
        ort_all += hyps
        sim_all += [r.hypothesis for r in s.per_utterance]
        rows.append({"set": es.name, "manifest": str(es.manifest), "utterances": len(es),
                     "audio_seconds": round(es.seconds, 2), "wer_ort": round(wer, 4),
                     "cer_ort": round(cer, 4), "wer_sim": round(s.wer, 4),
                     "cer_sim": round(s.cer, 4), "wer_abs_diff": round(abs(wer - s.wer), 4),
                     "within_0.005": abs(wer - s.wer) <= 0.005,
                     "wer_uncompressed": round(base.wer, 4),
                     "cer_uncompressed": round(base.cer, 4),
                     "by_length": by_length(per, secs),
                     "utterances_transcribed_differently": sum(
                         a.hypothesis != b.hypothesis for a, b in zip(per, s.per_utterance)),
                     "worst_utterances": worst(per)})
    return rows, pooled_wer(eval_sets, refs, ort_all, sim_all)


@torch.inference_mode()
def parity(ort_model, sim: nn.Module, features: Sequence[torch.Tensor],
           dynamic_paths: set[str]) -> dict:
    """ORT vs the simulation on a few utterances: max |Δ| of the encoder output and of the first
    decoding step's logits (same encoder input), and first-token agreement."""
    from workbench.whisper_eval import (MARGIN_FRAMES, ort_dynamic_activations, silence_tail,
                                        with_margin)
    enc_diff = logit_diff = 0.0
    same = 0
    with ort_dynamic_activations(sim, dynamic_paths):
        tail = silence_tail(sim)                                 # (1, 1500, D)
        for f in features:
            x = with_margin(f, MARGIN_FRAMES)
            ref = sim.encoder.encode(x[None])[0]
            got = torch.from_numpy(ort_model.encode(x.numpy()))
            enc_diff = max(enc_diff, float((ref - got).abs().max()))
            full = torch.cat([ref, tail[:, ref.shape[1]:]], dim=1)
            cache = sim.decoder.init_cache(full)
            logits, _ = sim.decoder(torch.tensor([list(sim.rules.prompt)]), cache)
            ort_logits = torch.from_numpy(ort_model.prompt(full.numpy())[0])[0, -1]
            logit_diff = max(logit_diff, float((logits[0, -1] - ort_logits).abs().max()))
            same += int(logits[0, -1].argmax()) == int(ort_logits.argmax())
    return {"utterances": len(features), "encoder_max_abs_diff": round(enc_diff, 5),
            "first_step_logits_max_abs_diff": round(logit_diff, 5),
            "first_token_agreement": same / max(len(features), 1),
            "reference": "compress(model, plan) in PyTorch with ORT's run-time input rounding "
                         "on its int8-dynamic layers (whisper_eval.ort_dynamic_activations)"}


def _ms_per_token(paths, rules, n_layers: int, features, threads: int = 1) -> tuple[float, float]:
    """(encoder ms on the first utterance, decoder ms per token p50) measured in ORT."""
    from workbench.whisper_eval import MARGIN_FRAMES, max_new_tokens, with_margin
    m = OrtWhisper(paths, rules, n_layers, threads=threads)
    x = with_margin(features[0], MARGIN_FRAMES).numpy()
    m.encode(x)                                                  # warm-up
    times = []
    for _ in range(5):
        t0 = time.perf_counter()
        m.encode(x)
        times.append(time.perf_counter() - t0)
    for f in features:
        m.transcribe_ids(f.numpy(), max_new_tokens(f.shape[-1] / 100))
    return (round(1e3 * float(np.median(times)), 2),
            round(1e3 * float(np.median(m.step_seconds)), 3) if m.step_seconds else float("nan"))


def stored_bytes(paths: dict[str, Path]) -> dict[str, int]:
    """Bytes of the graphs by kind: initializers (weights, scales, zero points, biases, norms,
    learned positions), Constant nodes (tensors the exporter folded in, e.g. computed tables), and
    the rest (graph structure: nodes, names, shapes)."""
    import onnx
    from onnx import numpy_helper

    def nbytes(t) -> int:  # noqa: ANN001
        return len(t.raw_data) or numpy_helper.to_array(t).nbytes   # packed int4 stays packed

    init = const = total = 0
    for path in paths.values():
        proto = onnx.load(str(path))
        total += Path(path).stat().st_size
        init += sum(nbytes(t) for t in proto.graph.initializer)
        const += sum(nbytes(a.t) for n in proto.graph.node if n.op_type == "Constant"
                     for a in n.attribute if a.name == "value")
    return {"initializers": init, "constants": const, "graph_structure": total - init - const,
            "files": total}


def whisper_size_section(paths: dict[str, Path], fp32_bytes: int, predicted: int,
                 notes: list[str]) -> dict:
    """report["size"]: the files, what they hold, and the gap to `workbench.size`'s prediction."""
    kinds = stored_bytes(paths)
    gap = kinds["files"] - predicted
    separate = [n for n in notes if "table stays separate" in n]
    return {"model_bytes": kinds["files"], "fp32_export_bytes": fp32_bytes,
            "ratio_vs_fp32_export": round(fp32_bytes / kinds["files"], 3),
            "size_prediction_bytes": predicted, "stored": kinds,
            "files_minus_prediction_bytes": gap,
            "files_vs_prediction": round(gap / predicted, 4),
            "initializers_vs_prediction": round((kinds["initializers"] - predicted) / predicted, 4),
            "graph_copies_note": (
                f"each weight is stored once (the decoder graph serves the prompt pass and "
                f"every step; the input embedding reads the tied output projection's stored "
                f"weight{'' if not separate else ' except: ' + '; '.join(separate)}): "
                f"initializers {kinds['initializers']:,} bytes vs the prediction "
                f"{predicted:,}; the files add {kinds['constants']:,} bytes of constants the "
                f"exporter folded in and {kinds['graph_structure']:,} bytes of graph structure, "
                f"which `workbench.size` does not price")}


def apply_whisper(model: nn.Module, tokenizer, plan, out: Path, eval_sets: Sequence,
                  *, strict: bool = False, overwrite: bool = False, parity_utterances: int = 5,
                  model_name: str = "workbench-whisper-tiny.en", int8_weights: str = "auto"
                  ) -> dict:
    """Export `model` compressed by `plan` to folder `out`, verify it, write report + card."""
    import onnx
    import onnxruntime

    from workbench.export.apply import check_output_dir
    from workbench.export.atomic import staged_dir, write_bytes_atomic, write_text_atomic
    from workbench.export.report import host_description, layer_rows, sha256
    from workbench.whisper_latency import rtf_by_device

    out = Path(out)
    start = time.perf_counter()
    check_output_dir(out, overwrite)
    stamped = plan if plan.model_fingerprint else plan_for_model(plan, model)
    with tempfile.TemporaryDirectory(prefix="workbench-whisper-") as tmp, staged_dir(out) as stage:
        ex = build_whisper_export(model, plan, Path(tmp), strict, int8_weights)
        sim, n = ex["sim"], len(model.decoder.blocks)
        dynamic = {d.path for d in ex["decisions"] if d.dynamic_activations}
        threads = max(1, torch.get_num_threads())
        ort_model = OrtWhisper(ex["model"], model.rules, n, threads=threads)
        accuracy, overall = accuracy_rows(ort_model, sim, model, tokenizer, eval_sets, dynamic)
        feats = list(eval_sets[0].features[:parity_utterances]) if eval_sets else []
        files = {}
        for name in GRAPHS:
            blob = ex["model"][name].read_bytes()
            write_bytes_atomic(stage / f"{name}.onnx", blob)
            files[f"{name}.onnx"] = {"bytes": len(blob), "sha256": sha256(blob)}
        fp32_bytes = sum(p.stat().st_size for p in ex["fp32"].values())
        enc_ms, tok_ms = _ms_per_token(ex["model"], model.rules, n, feats, 1) if feats else (
            None, None)
        enc32, tok32 = _ms_per_token(ex["fp32"], model.rules, n, feats, 1) if feats else (
            None, None)
        layers = layer_rows(ex["decisions"], ex["layer_nodes"])
        predicted = size(model, plan).total_bytes
        report = {
            "format": FORMAT, "deliverable": " + ".join(f"{g}.onnx" for g in GRAPHS),
            "files": files,
            "model": {"name": model_name, "family": getattr(model, "family", "whisper_asr"),
                      "fingerprint": fingerprint_of(model), "checkpoint": None},
            "versions": {"onnxruntime": onnxruntime.__version__, "onnx": onnx.__version__,
                         "torch": torch.__version__, "opset": 17},
            "host": host_description(),
            "accuracy": accuracy, "accuracy_all_sets": overall,
            "parity": parity(ort_model, sim, feats, dynamic) if feats else {},
            "latency_ms": {"threads": 1, "statistic": "median", "encoder_first_utterance":
                           {"model_ms": enc_ms, "fp32_ms": enc32},
                           "decoder_per_token": {"model_ms": tok_ms, "fp32_ms": tok32},
                           "source": f"measured: ONNX Runtime {onnxruntime.__version__}, batch 1,"
                                     f" greedy over {len(feats)} utterances"},
            "simulated_latency": {"method": "workbench.whisper_latency: encoder + cross K/V + "
                                            "tokens x decoder step, roofline per device",
                                  "rows": rtf_by_device(sim)},
            "size": whisper_size_section(ex["model"], fp32_bytes, predicted, ex["notes"]),
            "layers": layers, "rounded_up": [r["path"] for r in layers if r["changes"]],
            "notes": ex["notes"],
            "int8_weights": (ex["int8"].as_dict() if ex["int8"] is not None else
                             {"requested": int8_weights, "storage": None,
                              "reason": "no int8 MatMul weights in this plan"})}
        report["seconds"] = round(time.perf_counter() - start, 1)
        write_text_atomic(stage / "plan.json", stamped.to_json())
        write_text_atomic(stage / "report.json", json.dumps(report, indent=2) + "\n")
        from workbench.export.whisper_card import render_whisper
        write_text_atomic(stage / "MODEL_CARD.md",
                          render_whisper(report, resolve(plan, model), stamped.to_json()))
    return report


def apply_whisper_cli(args) -> int:
    """`workbench apply --model whisper --plan P --out DIR [--force] [--strict]`: the shipped
    Whisper tiny.en, both held-out sets; report JSON on stdout, a summary on stderr."""
    from workbench.evaluate import load_eval_set  # looked up per call: tests monkeypatch it
    from workbench.export.apply import check_plan_fits, read_plan
    from workbench.models.whisper_full import WhisperTokenizer, load_whisper_asr
    from workbench.paths import REAL_TEST, SYNTH_TEST  # looked up per call: tests monkeypatch it

    for flag, value in (("--checkpoint", getattr(args, "checkpoint", None)),
                        ("--conditions", getattr(args, "conditions", None))):
        if value:
            raise ArgumentError(f"{flag}: not available with --model whisper (the export reads "
                                f"the shipped Whisper tiny.en); drop {flag}.")
    if getattr(args, "runtime", "onnx") != "onnx":
        raise ArgumentError("--runtime executorch: the Whisper export writes ONNX only.")
    torch.set_num_threads(2)
    plan = read_plan(Path(args.plan))
    model = load_whisper_asr()
    check_plan_fits(plan, model, "Whisper tiny.en")
    sets = [load_eval_set(m, progress=False) for m in (REAL_TEST, SYNTH_TEST)]
    report = apply_whisper(model, WhisperTokenizer(), plan, Path(args.out), sets,
                           strict=args.strict, overwrite=args.force,
                           int8_weights=getattr(args, "int8_weights", "auto"))
    for row in report["accuracy"]:
        print(f"{row['set']}: WER ORT {row['wer_ort']:.4f} vs simulated {row['wer_sim']:.4f} "
              f"(|diff| {row['wer_abs_diff']:.4f})", file=sys.stderr)
    int8 = report["int8_weights"]
    if int8.get("storage"):
        print(f"int8 weights: {int8['reason']}", file=sys.stderr)
        if int8.get("warning"):
            print(f"warning: {int8['warning']}", file=sys.stderr)
    sys.stdout.write(json.dumps(report, indent=2) + "\n")
    return 0
