"""The HF wav2vec2 reader keeps the CTC head only through a complete vocab.json, and refuses a
bad one with the reason (review 7, finding 19): a missing symbol, or lower-case letters, gave a
fresh random head silently (WER ~1), and broken JSON a bare JSONDecodeError."""
from __future__ import annotations

import json

import pytest
import torch

from toys import torchaudio_wav2vec2
from workbench.byo.hf_wav2vec2 import load_wav2vec2_hf, write_wav2vec2_hf
from workbench.errors import CheckpointError
from workbench.models import VOCAB

#: facebook/wav2vec2-base-960h's vocab.json (32 symbols, letters by frequency).
HF_VOCAB = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3, "|": 4,
            **{c: 5 + i for i, c in enumerate("ETAONIHSRDLUMWCFGYPBVK'XJQZ")}}


@pytest.fixture(scope="module")
def raw():
    return torchaudio_wav2vec2(aux_num_out=len(HF_VOCAB))


def _folder(raw, tmp_path, vocab):
    folder = write_wav2vec2_hf(raw, tmp_path / "w2v")
    (folder / "vocab.json").write_text(vocab if isinstance(vocab, str) else json.dumps(vocab))
    return folder


def test_lower_case_letters_map_the_same_rows(raw, tmp_path) -> None:
    lower = {k.lower() if len(k) == 1 else k: v for k, v in HF_VOCAB.items()}
    rows = [HF_VOCAB[{"<blank>": "<pad>", " ": "|"}.get(s, s.upper())] for s in VOCAB]
    model = load_wav2vec2_hf(_folder(raw, tmp_path, lower))
    wave = torch.randn(1, 3200, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(model(wave)[0], raw(wave)[0][..., rows])


def test_a_vocab_without_a_symbol_is_refused_naming_it(raw, tmp_path) -> None:
    vocab = {k: v for k, v in HF_VOCAB.items() if k != "Q"}
    with pytest.raises(CheckpointError, match=r"vocab.json: no row for 'Q'.*Remove vocab.json"):
        load_wav2vec2_hf(_folder(raw, tmp_path, vocab))


def test_a_vocab_without_the_blank_is_refused(raw, tmp_path) -> None:
    vocab = {k: v for k, v in HF_VOCAB.items() if k != "<pad>"}
    with pytest.raises(CheckpointError, match="no row for '<pad>'"):
        load_wav2vec2_hf(_folder(raw, tmp_path, vocab))


def test_broken_json_is_a_checkpoint_error(raw, tmp_path) -> None:
    with pytest.raises(CheckpointError, match="vocab.json: not valid JSON"):
        load_wav2vec2_hf(_folder(raw, tmp_path, '{"<pad>": 0,'))


def test_a_vocab_that_is_no_object_is_refused(raw, tmp_path) -> None:
    with pytest.raises(CheckpointError, match="expected an object"):
        load_wav2vec2_hf(_folder(raw, tmp_path, list(HF_VOCAB)))


def test_a_row_outside_the_head_is_refused(raw, tmp_path) -> None:
    with pytest.raises(CheckpointError, match=r"rows must be integers 0\.\.31.*'Z': 99"):
        load_wav2vec2_hf(_folder(raw, tmp_path, {**HF_VOCAB, "Z": 99}))
