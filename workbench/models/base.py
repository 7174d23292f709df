"""The contract every acoustic model in the workbench follows.

A model maps log-mel features to CTC log-probabilities in three stages, so the interactive engine
can cache the input of any block and restart from there:

    stem(features (B, n_mels, T), feat_lengths (B,)) -> h (B, T', D), lengths (B,)
    blocks[i](h (B, T', D), pad_mask (B, T') bool True=pad) -> h (B, T', D)
    head(h (B, T', D), lengths (B,)) -> logits (B, T', V)        # final norm + CTC classifier

`forward` chains them and returns `(log_probs (B, T', V), lengths (B,))`.
`ROLES` maps module-path patterns (fnmatch) to roles; `role_of(model, path)` resolves a path.
`input_spec()` says what `features` is: n_mels log-mel channels at 100 frames/s, or, for a
model adapted to take audio samples (workbench.byo, features="waveform"), 1 channel at 16 kHz;
`example_input(model, seconds)` builds such an input.
"""
from __future__ import annotations

import fnmatch
from dataclasses import asdict, dataclass
from typing import Any, ClassVar, Literal

import torch
from torch import nn

from workbench.errors import WorkbenchError
from workbench.models.layers import lengths_to_pad_mask
from workbench.roles import ROLE_NAMES as ROLE_NAMES  # the roles profiles and plan groups name

#: Character vocabulary for CTC: index 0 is the blank, 1 the word separator (space).
VOCAB = ("<blank>", " ", "'", *"abcdefghijklmnopqrstuvwxyz")


#: Values per second of audio the workbench feeds: log-mel frames (10 ms hop), waveform samples
#: (workbench.features.FRAMES_PER_SECOND / SAMPLE_RATE, a layer above the models).
LOG_MEL_PER_SECOND = 100
WAVEFORM_PER_SECOND = 16_000


@dataclass(frozen=True)
class InputSpec:
    """What a model's `features` input is: (B, channels, T) with `per_second` values of T per
    second of audio."""

    kind: Literal["log_mel", "waveform"]
    channels: int
    per_second: int

    def length(self, seconds: float) -> int:
        """T for `seconds` of audio (at least 1)."""
        return max(1, round(seconds * self.per_second))


def input_spec(model: nn.Module) -> InputSpec:
    """The input of a workbench model (CTCModel.input_spec); WorkbenchError for another module
    (a foreign model is adapted first: workbench.byo.adapt)."""
    spec = getattr(model, "input_spec", None)
    if not callable(spec):
        raise WorkbenchError(f"{type(model).__name__}: not a workbench CTC model (no "
                             f"input_spec); adapt it first (workbench.byo.adapt).")
    return spec()


def example_input(model: nn.Module, seconds: float, *, seed: int | None = 0
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """(features (1, channels, T), feat_lengths (1,)) for `seconds` of audio: seeded standard
    normal values (`seed`), or zeros (seed=None)."""
    spec = input_spec(model)
    t = spec.length(seconds)
    if seed is None:
        x = torch.zeros(1, spec.channels, t)
    else:
        x = torch.randn(1, spec.channels, t, generator=torch.Generator().manual_seed(seed))
    return x, torch.tensor([t])


class CTCModel(nn.Module):
    """Base class: subclasses define `stem`, `blocks`, `head`, `config` and `ROLES`."""

    #: fnmatch patterns over module paths -> role; the first match wins.
    ROLES: ClassVar[tuple[tuple[str, str], ...]] = ()
    family: ClassVar[str] = "base"
    blocks: nn.ModuleList
    config: Any

    def stem(self, features: torch.Tensor, feat_lengths: torch.Tensor
             ) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def head(self, h: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, features: torch.Tensor, feat_lengths: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        if feat_lengths is None:
            feat_lengths = torch.full((features.shape[0],), features.shape[-1],
                                      dtype=torch.long, device=features.device)
        h, lengths = self.stem(features, feat_lengths)
        return self.forward_from(h, lengths, 0)

    def forward_from(self, h: torch.Tensor, lengths: torch.Tensor, start: int
                     ) -> tuple[torch.Tensor, torch.Tensor]:
        """Run blocks[start:] and the head on hidden states cached at the input of block `start`."""
        pad_mask = lengths_to_pad_mask(lengths, h.shape[1])
        for block in self.blocks[start:]:
            h = block(h, pad_mask)
        return self.head(h, lengths).log_softmax(dim=-1), lengths

    def encode_until(self, features: torch.Tensor, feat_lengths: torch.Tensor | None, stop: int
                     ) -> tuple[torch.Tensor, torch.Tensor]:
        """Hidden state at the input of block `stop` (0 = stem output, len(blocks) = head input):
        (B, T', D), lengths (B,). Lets callers cache it and restart from block `stop`."""
        if not 0 <= stop <= len(self.blocks):
            raise ValueError(f"stop: must be in 0..{len(self.blocks)}, got {stop}.")
        if feat_lengths is None:
            feat_lengths = torch.full((features.shape[0],), features.shape[-1],
                                      dtype=torch.long, device=features.device)
        h, lengths = self.stem(features, feat_lengths)
        pad_mask = lengths_to_pad_mask(lengths, h.shape[1])
        for block in self.blocks[:stop]:
            h = block(h, pad_mask)
        return h, lengths

    def input_spec(self) -> InputSpec:
        """What `features` is, from the config: `n_mels` log-mel channels at 100 frames/s, or a
        16 kHz waveform for a config with features="waveform" (workbench.byo)."""
        channels = int(getattr(self.config, "n_mels", 80))
        if getattr(self.config, "features", "log_mel") == "waveform":
            return InputSpec("waveform", channels, WAVEFORM_PER_SECOND)
        return InputSpec("log_mel", channels, LOG_MEL_PER_SECOND)

    def describe(self) -> dict[str, Any]:
        """Family and config as plain data (stored in checkpoints)."""
        return {"family": self.family, "config": asdict(self.config)}


def role_of(model: nn.Module, path: str) -> str:
    """Role of the submodule at `path` ("" is the whole model). Unknown paths are 'other'."""
    for pattern, role in getattr(model, "ROLES", ()):
        if fnmatch.fnmatchcase(path, pattern):
            return role
    return "other"


def module_roles(model: nn.Module) -> dict[str, str]:
    """Role of every named submodule that owns parameters directly (leaf layers)."""
    out = {}
    for path, module in model.named_modules():
        if path and any(True for _ in module.parameters(recurse=False)):
            out[path] = role_of(model, path)
    return out
