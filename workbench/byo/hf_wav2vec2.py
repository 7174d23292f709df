"""wav2vec2 in the Hugging Face layout (a local folder: config.json + model.safetensors) <->
torchaudio's `Wav2Vec2Model`, with no `transformers` and nothing downloaded.

    model = load_wav2vec2_hf(folder)       # torchaudio Wav2Vec2Model, then workbench.byo.adapt
    write_wav2vec2_hf(model, folder)       # the reverse, for tests and `workbench bench byo`

The layout is transformers' `Wav2Vec2ForCTC` (what `save_pretrained` writes): the config keys
torchaudio's own importer reads (torchaudio/models/wav2vec2/utils/import_huggingface.py,
`_get_config`), and parameter names that differ from torchaudio's only by prefix -
torchaudio's importer loads HF's feature_extractor / feature_projection / encoder state dicts
into its modules unchanged:

    wav2vec2.feature_extractor.*      -> feature_extractor.*
    wav2vec2.feature_projection.*     -> encoder.feature_projection.*
    wav2vec2.encoder.*                -> encoder.transformer.*
    lm_head.*                         -> aux.*
    ...pos_conv_embed.conv.weight_g / weight_v (weight norm, the older name of the hub's files)
                                      -> ...conv.parametrizations.weight.original0 / original1
    wav2vec2.masked_spec_embed        dropped: the vector SpecAugment-style masking writes during
                                      pre-training, never used at inference

With a `vocab.json` beside it that names every symbol of workbench.models.VOCAB (as
facebook/wav2vec2-base-960h does: "<pad>" is the CTC blank, "|" the word separator, letters
upper case), the CTC head keeps exactly those rows, in VOCAB's order, so `adapt` reuses it as a
trained head; the other symbols ("<s>", "</s>", "<unk>") are dropped - a frame whose best symbol
was one of them now decodes to its best VOCAB symbol. Without a vocab.json the head cannot be
mapped, and `adapt` starts from a fresh one (config.untrained says so). Anything else, a
vocab.json that is unreadable or lacks a symbol included, is refused with the reason.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torchaudio.models import wav2vec2_model

from workbench.errors import CheckpointError
from workbench.models.base import VOCAB

_PREFIXES = (("wav2vec2.feature_extractor.", "feature_extractor."),
             ("wav2vec2.feature_projection.", "encoder.feature_projection."),
             ("wav2vec2.encoder.", "encoder.transformer."),
             ("lm_head.", "aux."))
_WEIGHT_NORM = {".conv.weight_g": ".conv.parametrizations.weight.original0",
                ".conv.weight_v": ".conv.parametrizations.weight.original1"}
_DROPPED = ("wav2vec2.masked_spec_embed",)
#: config.json keys read, with what they mean (transformers' Wav2Vec2Config names).
_REQUIRED = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
             "conv_dim", "conv_kernel", "conv_stride", "num_conv_pos_embeddings",
             "num_conv_pos_embedding_groups")
#: HF symbols of our vocabulary (facebook/wav2vec2-base-960h's vocab.json spelling).
_HF_SYMBOL = {"<blank>": "<pad>", " ": "|", "'": "'", **{c: c.upper() for c in VOCAB[3:]}}


def _config(folder: Path) -> dict[str, Any]:
    path = folder / "config.json"
    if not path.is_file():
        raise CheckpointError(f"{folder}: no config.json; expected a local copy of a Hugging "
                              f"Face wav2vec2 model folder (config.json + model.safetensors).")
    try:
        cfg = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{path}: not valid JSON ({err}).") from None
    if cfg.get("model_type") != "wav2vec2":
        raise CheckpointError(f"{path}: model_type {cfg.get('model_type')!r}; this reader takes "
                              f"'wav2vec2' (Wav2Vec2ForCTC / Wav2Vec2Model).")
    missing = [k for k in _REQUIRED if k not in cfg]
    if missing:
        raise CheckpointError(f"{path}: missing {', '.join(missing)}.")
    for key, want in (("hidden_act", "gelu"), ("feat_extract_activation", "gelu")):
        if cfg.get(key, want) != want:
            raise CheckpointError(f"{path}: {key}={cfg[key]!r}; torchaudio's wav2vec2 uses "
                                  f"{want!r} only.")
    if cfg.get("feat_extract_norm", "group") not in ("group", "layer"):
        raise CheckpointError(f"{path}: feat_extract_norm={cfg['feat_extract_norm']!r}; "
                              f"'group' or 'layer'.")
    return cfg


def _tensors(folder: Path) -> dict[str, torch.Tensor]:
    path = folder / "model.safetensors"
    if not path.is_file():
        raise CheckpointError(f"{folder}: no model.safetensors (a pytorch_model.bin holds "
                              f"pickled code as well as weights; convert it to safetensors).")
    from safetensors import SafetensorError
    from safetensors.torch import load_file
    try:
        return load_file(path)
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"{path}: not a readable safetensors file ({err}).") from None


def torchaudio_name(hf_name: str) -> str | None:
    """torchaudio's parameter name for an HF Wav2Vec2ForCTC tensor (None: not used)."""
    if hf_name in _DROPPED:
        return None
    for hf, ours in _PREFIXES:
        if hf_name.startswith(hf):
            name = ours + hf_name[len(hf):]
            for old, new in _WEIGHT_NORM.items():
                if name.endswith(old):
                    name = name[: -len(old)] + new
            return name
    raise CheckpointError(f"tensor {hf_name!r}: not part of a wav2vec2 model in the Hugging "
                          f"Face layout (expected names under wav2vec2. or lm_head.).")


def _vocab_rows(folder: Path, head_rows: int) -> list[int] | None:
    """Rows of lm_head for VOCAB's symbols, in VOCAB's order, from vocab.json; None without a
    vocab.json (the head cannot be mapped: `adapt` installs a fresh one and says untrained).
    A vocab.json that cannot be read, or lacks a symbol, is refused: a head silently replaced
    by a random one would give WER ~1 with nothing to say why. Letters may be upper case (as
    facebook/wav2vec2-base-960h writes them) or lower case."""
    path = folder / "vocab.json"
    if not path.is_file():
        return None
    try:
        table = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{path}: not valid JSON ({err}).") from None
    if not isinstance(table, dict):
        raise CheckpointError(f"{path}: expected an object symbol -> row of lm_head, got "
                              f"{type(table).__name__}.")
    upper = sum(_HF_SYMBOL[c] in table for c in VOCAB[3:])
    lower = sum(c in table for c in VOCAB[3:])
    spell = dict(_HF_SYMBOL, **({c: c for c in VOCAB[3:]} if lower > upper else {}))
    missing = [spell[s] for s in VOCAB if spell[s] not in table]
    if missing:
        raise CheckpointError(f"{path}: no row for {', '.join(map(repr, missing))}; the CTC "
                              f"head is kept only when vocab.json names every symbol of "
                              f"{''.join(VOCAB[3:])}, ' ', \"'\" and the blank (as '<pad>', '|', "
                              f"\"'\"). Remove vocab.json to start from a fresh, untrained head.")
    rows = [table[spell[s]] for s in VOCAB]
    bad = [f"{spell[s]!r}: {r!r}" for s, r in zip(VOCAB, rows)
           if isinstance(r, bool) or not isinstance(r, int) or not 0 <= r < head_rows]
    if bad:
        raise CheckpointError(f"{path}: rows must be integers 0..{head_rows - 1} (lm_head has "
                              f"{head_rows}); got {', '.join(bad[:3])}.")
    return rows


def load_wav2vec2_hf(folder: str | Path) -> nn.Module:
    """A torchaudio `Wav2Vec2Model` from a local HF wav2vec2 folder (see module doc), in eval
    mode. CheckpointError names the file and the problem."""
    folder = Path(folder)
    cfg = _config(folder)
    tensors = _tensors(folder)
    state = {name: t for k, t in tensors.items() if (name := torchaudio_name(k)) is not None}
    aux_out = state["aux.weight"].shape[0] if "aux.weight" in state else None
    rows = _vocab_rows(folder, aux_out) if aux_out is not None else None
    if rows is not None:
        state["aux.weight"], state["aux.bias"] = state["aux.weight"][rows], state["aux.bias"][rows]
        aux_out = len(VOCAB)
    model = wav2vec2_model(
        extractor_mode=f"{cfg.get('feat_extract_norm', 'group')}_norm",
        extractor_conv_layer_config=list(zip(cfg["conv_dim"], cfg["conv_kernel"],
                                             cfg["conv_stride"], strict=True)),
        extractor_conv_bias=bool(cfg.get("conv_bias", False)),
        encoder_embed_dim=cfg["hidden_size"], encoder_projection_dropout=0.0,
        encoder_pos_conv_kernel=cfg["num_conv_pos_embeddings"],
        encoder_pos_conv_groups=cfg["num_conv_pos_embedding_groups"],
        encoder_num_layers=cfg["num_hidden_layers"],
        encoder_num_heads=cfg["num_attention_heads"], encoder_attention_dropout=0.0,
        encoder_ff_interm_features=cfg["intermediate_size"], encoder_ff_interm_dropout=0.0,
        encoder_dropout=0.0, encoder_layer_norm_first=bool(cfg.get("do_stable_layer_norm", False)),
        encoder_layer_drop=0.0, aux_num_out=aux_out)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise CheckpointError(f"{folder / 'model.safetensors'}: does not match config.json: "
                              f"missing {missing[:5]}{' ...' if len(missing) > 5 else ''}, "
                              f"unexpected {unexpected[:5]}"
                              f"{' ...' if len(unexpected) > 5 else ''}.")
    wrong = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in expected.items()
             if state[k].shape != v.shape]
    if wrong:
        raise CheckpointError(f"{folder / 'model.safetensors'}: shapes do not match config.json: "
                              + "; ".join(wrong[:3]) + ".")
    model.load_state_dict(state)
    return model.eval()


def write_wav2vec2_hf(model: nn.Module, folder: Path, vocab: dict[str, int] | None = None
                      ) -> Path:
    """Write a torchaudio wav2vec2 (group-norm or layer-norm extractor) as an HF folder:
    config.json, model.safetensors (weight norm as weight_g / weight_v, as the hub's files
    store it) and, if given, vocab.json. Returns the folder."""
    from safetensors.torch import save_file
    ours_to_hf = {ours: hf for hf, ours in _PREFIXES}
    out = {}
    for name, t in model.state_dict().items():
        prefix = next(p for p in sorted(ours_to_hf, key=len, reverse=True) if name.startswith(p))
        hf = ours_to_hf[prefix] + name[len(prefix):]
        for old, new in _WEIGHT_NORM.items():
            if hf.endswith(new):
                hf = hf[: -len(new)] + old
        out[hf] = t.detach().clone().contiguous()
    fe, tr = model.feature_extractor, model.encoder.transformer
    convs = [layer.conv for layer in fe.conv_layers]
    first = tr.layers[0]
    cfg = {"model_type": "wav2vec2", "architectures": ["Wav2Vec2ForCTC"],
           "hidden_size": tr.layer_norm.normalized_shape[0],
           "num_hidden_layers": len(tr.layers),
           "num_attention_heads": first.attention.num_heads,
           "intermediate_size": first.feed_forward.intermediate_dense.out_features,
           "conv_dim": [c.out_channels for c in convs],
           "conv_kernel": [c.kernel_size[0] for c in convs],
           "conv_stride": [c.stride[0] for c in convs],
           "conv_bias": convs[0].bias is not None,
           "feat_extract_norm": ("layer" if fe.conv_layers[-1].layer_norm is not None
                                 else "group"),
           "num_conv_pos_embeddings": tr.pos_conv_embed.conv.kernel_size[0],
           "num_conv_pos_embedding_groups": tr.pos_conv_embed.conv.groups,
           "do_stable_layer_norm": bool(first.layer_norm_first),  # Transformer holds the negation
           "hidden_act": "gelu", "feat_extract_activation": "gelu",
           "vocab_size": model.aux.out_features if model.aux is not None else None}
    folder.mkdir(parents=True, exist_ok=True)
    save_file(out, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps(cfg, indent=1))
    if vocab is not None:
        (folder / "vocab.json").write_text(json.dumps(vocab))
    return folder
