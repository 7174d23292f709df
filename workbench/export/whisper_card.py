"""MODEL_CARD.md of a full-Whisper export (Hugging Face model-card format), from its report.json.

Built from the CTC card's pieces (`workbench.export.model_card`: front matter, plan table, methods,
accuracy table, sources); only what differs is here: the three graphs and their interface, the
parity of a decoder (encoder output, first-step logits, whole transcripts), latency per token, and
the failure modes of an autoregressive decoder.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from workbench.export.model_card import (SET_TITLES, SOURCES, _table, accuracy_section,
                                         front_matter, methods, plan_table, rounded_sentence,
                                         worst_examples)
from workbench.whisper_eval import TOKENS_BASE, TOKENS_PER_SECOND  # the loop's own budget

INTERFACE = (
    "`encoder.onnx`: `mel` (1, 80, T) float32 log-mel at 100 frames/s (the audio followed by 1 s "
    "of silence) -> `enc` (1, T/2, 384). `cross_kv.onnx`: `enc` (1, 1500, 384) = the audio's "
    "encoding followed by the encoding of 30 s of silence -> per layer `cross_key_i` / "
    "`cross_value_i`. `decoder.onnx`: `tokens` (1, L), per layer `past_key_i` / `past_value_i` "
    "(1, H, P, 64) and the cross keys/values -> `logits` (1, 1, vocab) of the last token and "
    "`present_*` (P + L positions); the prompt pass feeds the prompt "
    "`<|startoftranscript|><|notimestamps|>` with an empty past (P = 0), each step one token. "
    "Greedy loop: `workbench.export.whisper_onnx.OrtWhisper`.")


def failure_modes(report: Mapping[str, Any]) -> list[str]:
    out = [
        "Inputs longer than 29 s (plus the 1 s silence margin: 3000 mel frames) are outside "
        "the encoder's 1500 positions: split the audio first.",
        "Autoregressive decoding can loop on a damaged (over-compressed) model: the greedy loop "
        f"stops at {TOKENS_BASE} + {TOKENS_PER_SECOND} tokens per audio second, so a loop shows "
        "as insertions, not a hang.",
        "English only (tiny.en), no timestamps, greedy (no beam search, no temperature "
        "fallback); transcripts are normalized (lower case, numbers as words) before scoring.",
        "The real-speech test set is one speaker on 8 kHz telephone audio: accuracy on other "
        "voices, microphones, noise and accents is not measured here.",
    ]
    for row in report["accuracy"]:
        if row.get("worst_utterances"):
            out.append(f"{SET_TITLES.get(row['set'], row['set'])}: worst examples: " +
                       worst_examples(row["worst_utterances"]) + ".")
    rounded = rounded_sentence(report.get("rounded_up") or [])
    if rounded:
        out.append(rounded)
    if any(r["input_quantized_at_run_time"] for r in report["layers"]):
        out.append("int8 dynamic layers quantize their input to uint8 at run time; the "
                   "simulated WER includes that rounding (per item).")
    return out


def render_whisper(report: Mapping[str, Any], resolved: Mapping[str, Any], plan_json: str) -> str:
    model, size, par = report["model"], report["size"], report.get("parity") or {}
    lat = report["latency_ms"]
    parts = [front_matter(report, model["family"], decoding="whisper",
                          task="Speech recognition (Whisper greedy decoding, ONNX Runtime CPU)"),
             "", f"# {model['name']}: Whisper tiny.en compressed for edge CPUs", "",
             f"{report['deliverable']} ({size['model_bytes']:,} bytes in all; ONNX opset "
             f"{report['versions']['opset']}). {INTERFACE} Made by "
             f"`workbench.export.whisper_apply.apply_whisper` from `plan.json`; every number "
             f"below is from `report.json`, measured in the same run.", "",
             "## Compression plan", "", plan_table(resolved, report["layers"]), "",
             "## Compression methods", ""]
    parts += [f"- {m}" for m in methods(resolved, report["layers"], report.get("int8_weights"))]
    if (report.get("int8_weights") or {}).get("warning"):
        parts += [f"- Target CPU: {report['int8_weights']['warning']}"]
    parts += ["", "## Accuracy", "", accuracy_section(report), ""]
    if par:
        parts += [f"Parity, ONNX Runtime vs the PyTorch simulation on {par['utterances']} "
                  f"utterances: max |Δ encoder output| {par['encoder_max_abs_diff']}, max |Δ "
                  f"first-step logits| {par['first_step_logits_max_abs_diff']}, first token "
                  f"the same on {par['first_token_agreement']:.0%}. Whole transcripts that "
                  f"differ: " + ", ".join(f"{r['utterances_transcribed_differently']} of "
                                          f"{r['utterances']} ({r['set']})"
                                          for r in report["accuracy"]) + ".", ""]
    enc, tok = lat["encoder_first_utterance"], lat["decoder_per_token"]
    parts += ["## Size and latency", "",
              f"Files: {size['model_bytes']:,} bytes; fp32 export of the same structure "
              f"{size['fp32_export_bytes']:,} bytes ({size['ratio_vs_fp32_export']}x). "
              f"`workbench.size` predicts {size['size_prediction_bytes']:,} bytes: "
              f"{size['graph_copies_note']}.", "",
              f"Measured ({lat['source']}, {lat['threads']} thread, {lat['statistic']}): "
              f"encoder {enc['model_ms']} ms (fp32 {enc['fp32_ms']} ms) on the first utterance; "
              f"decoder {tok['model_ms']} ms per token (fp32 {tok['fp32_ms']} ms).", "",
              f"Simulated per device ({report['simulated_latency']['method']}):", "",
              _table(("device", "audio (s)", "tokens", "encoder ms", "ms per token", "total ms",
                      "RTF", "band"),
                     [(r["device"], r["audio_seconds"], r["tokens"], r["encoder_ms"],
                       r["per_token_ms"], r["total_ms"], r["rtf"], f"±{r['band_pct']:.0f} %")
                      for r in report["simulated_latency"]["rows"]]), "",
              "## Known failure modes and limits", ""]
    parts += [f"- {f}" for f in failure_modes(report)]
    parts += ["", "## Data sources and licenses", ""]
    parts += [f"- {what}: {lic}" for what, lic in SOURCES]
    parts += ["- Whisper tiny.en decoder and tokenizer (OpenAI), from the same CTranslate2 "
              "directory (`model.bin`, `tokenizer.json`): MIT",
              "", "## Reproduce", "", "```python",
              "from workbench.export.whisper_apply import apply_whisper",
              "apply_whisper(load_whisper_asr(), WhisperTokenizer(), plan_from_file('plan.json'),"
              " out, [load_eval_set(REAL_TEST), load_eval_set(SYNTH_TEST)])",
              "```", "", "```json", plan_json.strip(), "```", ""]
    return "\n".join(parts)
