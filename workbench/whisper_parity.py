"""Parity of our PyTorch Whisper (encoder + KV-cached greedy decoder) with CTranslate2's decoding.

CTranslate2 (PyPI `ctranslate2`, pinned in requirements-test.txt) reads the same `model.bin`; we
run its `Whisper.generate` greedily (beam 1, fp32, English prompt, no timestamps, blank and
end-of-text suppressed at the start, config.json's suppress_ids) on the 30 s padded log-mel it is
made for, and compare token ids and normalized transcripts with ours.

    ct2_transcripts(features, ...)        CTranslate2 token ids per utterance
    parity(model, tokenizer, features)    ParityResult: share of identical token sequences /
                                          transcripts, and the utterances that differ
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from workbench.data import normalize_text
from workbench.errors import WorkbenchError
from workbench.models.ct2_reader import default_whisper_dir


@dataclass(frozen=True)
class ParityResult:
    utterances: int
    identical_tokens: int
    identical_text: int
    differences: tuple[dict, ...] = field(repr=False)

    @property
    def token_rate(self) -> float:
        return self.identical_tokens / max(1, self.utterances)

    @property
    def text_rate(self) -> float:
        return self.identical_text / max(1, self.utterances)


def ct2_tokens(features: list[torch.Tensor] | tuple[torch.Tensor, ...], model_dir: Path | None = None,
               max_length: int = 448, batch_size: int = 8, threads: int = 1) -> list[list[int]]:
    """Greedy CTranslate2 token ids (no prompt, no end-of-text) per (80, T) feature tensor."""
    try:
        import ctranslate2
    except ImportError:
        raise WorkbenchError("Parity checks need CTranslate2: `pip install -r "
                             "requirements-test.txt` (ctranslate2==4.8.5).") from None

    model = ctranslate2.models.Whisper(str(model_dir or default_whisper_dir()), device="cpu",
                                       compute_type="float32", intra_threads=threads)
    prompt = ["<|startoftranscript|>", "<|notimestamps|>"]
    out: list[list[int]] = []
    for start in range(0, len(features), batch_size):
        chunk = features[start:start + batch_size]
        if len({f.shape[-1] for f in chunk}) != 1:
            raise WorkbenchError("features: CTranslate2 needs equal lengths in a batch; pass "
                                 "features padded to 30 s (workbench.whisper_eval.padded_features).")
        batch = ctranslate2.StorageView.from_array(torch.stack(list(chunk)).numpy())
        results = model.generate(batch, [prompt] * len(chunk), beam_size=1, max_length=max_length,
                                 suppress_blank=True, suppress_tokens=[-1],
                                 return_scores=False)
        out.extend(list(r.sequences_ids[0]) for r in results)
    return out


def compare(ours: list[list[int]], theirs: list[list[int]], tokenizer, ids=None) -> ParityResult:
    """Share of identical token sequences and normalized transcripts; differing items listed."""
    diffs = []
    same_tokens = same_text = 0
    for i, (a, b) in enumerate(zip(ours, theirs)):
        ta, tb = normalize_text(tokenizer.decode(a)), normalize_text(tokenizer.decode(b))
        same_tokens += a == b
        same_text += ta == tb
        if ta != tb:
            diffs.append({"id": ids[i] if ids else i, "ours": ta, "ct2": tb})
    return ParityResult(len(ours), same_tokens, same_text, tuple(diffs))
