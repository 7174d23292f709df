"""Evaluation: features of an eval set computed once, greedy CTC decoding, WER / CER with jiwer."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import jiwer
import torch
from tqdm import tqdm

from workbench.checks import check_int, check_model
from workbench.data import load_audio, normalize_text
from workbench.data.audio import audio_seconds
from workbench.decode import greedy_decode
from workbench.errors import ArgumentError, DataError
from workbench.features import FRAMES_PER_SECOND, SAMPLE_RATE, collate_features, log_mel
from workbench.models.base import CTCModel

#: Feature values per second of audio, by EvalSet.feature_kind.
FEATURE_RATES = {"log_mel": FRAMES_PER_SECOND, "waveform": SAMPLE_RATE}


@dataclass(frozen=True)
class EvalSet:
    """An evaluation set with its features cached, one tensor per utterance: log-mel (80, T_i)
    at 100 frames/s (`feature_kind` "log_mel", the default), or the 16 kHz waveform (1, N_i)
    for models that take audio samples (`feature_kind` "waveform", e.g. an adapted wav2vec2)."""

    name: str
    manifest: Path
    ids: tuple[str, ...]
    texts: tuple[str, ...]
    features: tuple[torch.Tensor, ...]
    feature_kind: str = "log_mel"

    def __post_init__(self) -> None:
        counts = {"ids": len(self.ids), "texts": len(self.texts), "features": len(self.features)}
        if len(set(counts.values())) != 1:
            raise ArgumentError(f"EvalSet '{self.name}': ids, texts and features must have one "
                                f"entry per utterance, got {counts}.")
        if self.feature_kind not in FEATURE_RATES:
            raise ArgumentError(f"EvalSet '{self.name}': feature_kind {self.feature_kind!r}; "
                                f"one of {sorted(FEATURE_RATES)}.")

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def seconds(self) -> float:
        return sum(f.shape[-1] for f in self.features) / FEATURE_RATES[self.feature_kind]

    def subset(self, indices: list[int], name: str | None = None) -> EvalSet:
        bad = [i for i in indices if isinstance(i, bool) or not isinstance(i, int)
               or not -len(self) <= i < len(self)]
        if bad:
            raise ArgumentError(f"EvalSet.subset(indices=...): {bad[:5]} not indices of the "
                                f"{len(self)} utterances of '{self.name}'.")
        return EvalSet(name or f"{self.name}[{len(indices)}]", self.manifest,
                       tuple(self.ids[i] for i in indices), tuple(self.texts[i] for i in indices),
                       tuple(self.features[i] for i in indices), self.feature_kind)


@dataclass(frozen=True)
class UtteranceResult:
    id: str
    reference: str
    hypothesis: str
    word_errors: int
    words: int


@dataclass(frozen=True)
class EvalResult:
    wer: float
    cer: float
    utterances: int
    seconds: float            # wall-clock time of the model run + decoding
    audio_seconds: float
    per_utterance: tuple[UtteranceResult, ...] = field(repr=False)


#: Longest utterance an eval set takes: the Whisper encoder's 1,500 positions = 30 s.
MAX_EVAL_SECONDS = 30.0


def load_eval_set(manifest: Path | str, limit: int | None = None, progress: bool = True,
                  name: str | None = None, max_seconds: float = MAX_EVAL_SECONDS,
                  features: str = "log_mel") -> EvalSet:
    """Read a manifest, load + resample its audio, compute features once: `features`
    "log_mel" (80, T) or "waveform" (1, samples at 16 kHz, for models that take audio).

    Checked before any feature is computed (DataError naming the manifest line or file):
    `limit` is None or >= 1; every reference has words after normalization (an empty reference
    makes WER meaningless); every audio file exists and, from its header, is at most
    `max_seconds` long.
    """
    from workbench.data import read_manifest  # looked up per call: tests monkeypatch it

    check_int(limit, "load_eval_set", "limit", low=1, none_ok=True)
    if features not in FEATURE_RATES:
        raise ArgumentError(f"load_eval_set(features={features!r}): one of "
                            f"{sorted(FEATURE_RATES)}.")
    manifest = Path(manifest) if isinstance(manifest, str | Path) else manifest
    utts = read_manifest(manifest)[:limit]
    texts = []
    for u in utts:
        text = normalize_text(u.text)
        if not text:
            raise DataError(f"{manifest}: utterance '{u.id}' has reference text {u.text!r:.60}, "
                            f"which has no words after normalization; WER is undefined for it. "
                            f"Fix its text or remove it from the manifest.")
        texts.append(text)
    missing = [str(u.audio_path) for u in utts if not u.audio_path.is_file()]
    if missing:
        raise DataError(f"{manifest}: {len(missing)} audio file(s) missing, e.g. {missing[:3]}; "
                        f"audio_filepath is relative to the manifest's folder.")
    for u in utts:  # headers only: a 1 h file is refused before any feature is computed
        seconds = audio_seconds(u.audio_path)
        if seconds > max_seconds:
            raise DataError(f"{u.audio_path}: {seconds:,.1f} s of audio (utterance '{u.id}' in "
                            f"{manifest}), longer than the {max_seconds:g} s an utterance may "
                            f"be; split it into shorter utterances.")
    compute = log_mel if features == "log_mel" else (lambda wave: wave.reshape(1, -1))
    feats = [compute(load_audio(u.audio_path, max_seconds=max_seconds))
             for u in tqdm(utts, desc=f"features {manifest.parent.name}", disable=not progress,
                           leave=False)]
    return EvalSet(name or manifest.parent.name, manifest, tuple(u.id for u in utts),
                   tuple(texts), tuple(feats), features)


def batches(lengths: list[int], max_frames: int = 12_000, max_ratio: float = 1.25
            ) -> list[list[int]]:
    """Indices grouped by similar length so padding is small.

    Each batch holds <= max_frames padded frames, and its longest item is at most `max_ratio`
    times its shortest: padded frames cost the same compute as real ones (attention
    quadratically), and on 2 cores splitting at 1.25 made a block run ~30 % faster than
    filling batches up to max_frames, while batches stay large enough for efficient GEMMs.
    """
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    out: list[list[int]] = []
    cur: list[int] = []
    for i in order:
        if cur and (lengths[i] * (len(cur) + 1) > max_frames
                    or lengths[i] > max_ratio * max(1, lengths[cur[0]])):
            out.append(cur)
            cur = []
        cur.append(i)
    if cur:
        out.append(cur)
    return out


@torch.inference_mode()
def transcribe(model: CTCModel, features: tuple[torch.Tensor, ...], max_frames: int = 12_000
               ) -> list[str]:
    """Greedy CTC transcripts for each (80, T) feature tensor, batched by length."""
    check_model(model, "transcribe")
    check_int(max_frames, "transcribe", "max_frames", low=1)
    if isinstance(features, torch.Tensor) or not isinstance(features, list | tuple):
        raise ArgumentError(f"transcribe(features=...): expected a list or tuple of (n_mels, T) "
                            f"tensors (EvalSet.features), got {type(features).__name__}.")
    for i, f in enumerate(features):
        if not isinstance(f, torch.Tensor) or f.dim() != 2 or f.shape[-1] == 0:
            what = (f"shape {tuple(f.shape)}" if isinstance(f, torch.Tensor)
                    else type(f).__name__)
            raise ArgumentError(f"transcribe(features[{i}]): expected an (n_mels, T) tensor with "
                                f"T >= 1, got {what}; compute it with workbench.log_mel(wave).")
        if not bool(torch.isfinite(f).all()):
            raise DataError(f"transcribe(features[{i}]): holds NaN or infinite values.")
    was_training = model.training
    model.eval()
    hyps: list[str] = [""] * len(features)
    try:
        for idx in batches([f.shape[-1] for f in features], max_frames):
            x, lens = collate_features([features[i] for i in idx])
            log_probs, out_lens = model(x, lens)
            for i, text in zip(idx, greedy_decode(log_probs, out_lens)):
                hyps[i] = text
    finally:
        model.train(was_training)
    return hyps


def check_eval_set(eval_set: object, verb: str, arg: str = "eval_set") -> EvalSet:
    """An EvalSet with at least one utterance (ArgumentError / DataError otherwise)."""
    if not isinstance(eval_set, EvalSet):
        hint = (" Load one with workbench.load_eval_set(manifest_path)."
                if isinstance(eval_set, str | Path) else "")
        raise ArgumentError(f"{verb}({arg}=...): expected an EvalSet, got "
                            f"{type(eval_set).__name__}.{hint}")
    if len(eval_set) == 0:
        raise DataError(f"{verb}({arg}=...): the eval set '{eval_set.name}' has no utterances; "
                        f"WER of nothing is undefined.")
    return eval_set


def score(references: list[str] | tuple[str, ...], hypotheses: list[str], ids=None
          ) -> tuple[float, float, tuple[UtteranceResult, ...]]:
    """Corpus WER and CER (fractions) with jiwer, plus per-utterance word errors."""
    refs = list(references)
    if not refs:
        raise DataError("score: no utterances to score; an empty eval set has no WER.")
    empty = [ids[i] if ids else str(i) for i, r in enumerate(refs) if not r.strip()]
    if empty:
        raise DataError(f"score: reference(s) {empty[:5]} have no words; WER is undefined for "
                        f"them. Fix their text or leave them out of the eval set.")
    wer = jiwer.wer(refs, hypotheses)
    cer = jiwer.cer(refs, hypotheses)
    per = []
    for i, (r, h) in enumerate(zip(refs, hypotheses)):
        out = jiwer.process_words(r, h)
        errors = out.substitutions + out.deletions + out.insertions
        per.append(UtteranceResult(ids[i] if ids else str(i), r, h, errors, len(r.split())))
    return float(wer), float(cer), tuple(per)


def evaluate(model: CTCModel, eval_set: EvalSet, lexicon=None) -> EvalResult:
    """WER / CER of `model` on `eval_set`: greedy CTC decoding, then (optionally) lexicon
    correction of out-of-lexicon words (`workbench.lexicon.Lexicon`)."""
    check_model(model, "evaluate")
    check_eval_set(eval_set, "evaluate")
    if lexicon is not None and not callable(getattr(lexicon, "correct", None)):
        raise ArgumentError(f"evaluate(lexicon=...): expected a workbench.lexicon.Lexicon (or "
                            f"None), got {type(lexicon).__name__}.")
    start = time.perf_counter()
    hyps = transcribe(model, eval_set.features)
    if lexicon is not None:
        hyps = [lexicon.correct(h) for h in hyps]
    seconds = time.perf_counter() - start
    wer, cer, per = score(eval_set.texts, hyps, eval_set.ids)
    return EvalResult(wer, cer, len(eval_set), seconds, eval_set.seconds, per)
