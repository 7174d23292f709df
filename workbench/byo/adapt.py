"""Bring your own model: `adapt(model, ...)` gives a foreign encoder the workbench model contract.

    adapt(torchaudio.models.Conformer(...))         log-mel (B, 80, T) in, CTC log-probs out
    adapt(torchaudio.models.wav2vec2_model(...))    waveform as a (B, 1, samples) "feature"
    adapt(model, stem=..., blocks="layers")         any encoder: you say how input becomes
                                                    hidden states and where the blocks are

The contract (workbench.models.base): stem(features, lengths) -> (h (B, T', D), lengths),
blocks[i](h, pad_mask (B, T') True = pad) -> h, head(h, lengths) -> logits (B, T', V). Blocks
are what lets the engine cache hidden states and restart evaluation from the first block a plan
touches. The adapted model owns a deep copy of yours (yours is never changed): its blocks under
`blocks.i.block`, the rest under `encoder` (whose own forward is no longer used),
and a CTC head over workbench.models.VOCAB: reused when your model's output layer already has
that size, else a fresh Linear (seed 0) and `config.untrained` says so.
"""
from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import nn

from workbench.errors import ArgumentError, WorkbenchError
from workbench.graph import discover
from workbench.models.base import VOCAB, CTCModel
from workbench.models.layers import lengths_to_pad_mask


@dataclass(frozen=True)
class AdaptedConfig:
    """What the adapter knows about the foreign model (plain data, shown in the UI and cards)."""

    source: str          # class of the wrapped model, e.g. "torchaudio Conformer"
    features: str        # "log_mel" (B, n_mels, T) or "waveform" (B, 1, samples)
    n_mels: int          # feature channels the stem takes (1 for waveform)
    d_model: int
    n_layers: int
    vocab_size: int
    untrained: bool      # True when the CTC head is fresh (random)


class _Block(nn.Module):
    """One foreign block behind the contract's call: (h (B, T, D), pad_mask) -> h."""

    def __init__(self, block: nn.Module, call: Callable[[nn.Module, torch.Tensor, torch.Tensor],
                                                        torch.Tensor]) -> None:
        super().__init__()
        self.block = block
        self._call = call

        self._structure = None  # this block's graph groups, set by AdaptedCTC.graph_structure

    @property
    def graph_structure(self):  # noqa: ANN201 - workbench.graph.Structure or None
        """The adapted model's graph groups inside this block, paths relative to it (so the
        engine's per-block compress_module prunes them as compress() would)."""
        return self._structure

    def forward(self, h: torch.Tensor, pad_mask: torch.Tensor) -> torch.Tensor:
        return self._call(self.block, h, pad_mask)


class AdaptedCTC(CTCModel):
    """A foreign encoder + CTC head behind the workbench contract (built by `adapt`)."""

    family = "adapted"

    def __init__(self, encoder: nn.Module, config: AdaptedConfig,
                 stem: Callable[[nn.Module, torch.Tensor, torch.Tensor],
                                tuple[torch.Tensor, torch.Tensor]],
                 blocks: Sequence[nn.Module],
                 block_call: Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor],
                 ctc: nn.Module, roles: tuple[tuple[str, str], ...],
                 final: Callable[[nn.Module, torch.Tensor], torch.Tensor] | None = None,
                 *, _owned: bool = False) -> None:
        super().__init__()
        if not _owned:  # adapt() passes its own copy; a direct caller's modules are copied
            # in one deepcopy, so the blocks stay the encoder's own modules: the block lists
            # are emptied below, `.eval()` and head training act on the copy, never on yours
            encoder, blocks, ctc = copy.deepcopy((encoder, tuple(blocks), ctc))
        self.encoder = encoder
        self.config = config
        self.ctc = ctc
        self._stem = stem
        self._final = final
        # the blocks move out of the (copied) encoder into `blocks`, so every parameter has one
        # path and block i's modules are under "blocks.i." as the engine expects
        self.blocks = nn.ModuleList(_Block(b, block_call) for b in blocks)
        for path, module in list(encoder.named_modules()):
            if isinstance(module, (nn.ModuleList, nn.Sequential)) and len(module) and all(
                    any(m is b for b in blocks) for m in module):
                parent, _, attr = path.rpartition(".")
                setattr(encoder.get_submodule(parent) if parent else encoder, attr,
                        type(module)())
        self.ROLES = roles  # instance attribute: patterns depend on the wrapped model
        self._structure = None  # workbench.graph.Structure, found on first use

    @property
    def graph_structure(self):  # noqa: ANN201 - workbench.graph.Structure
        """Prunable groups found from the recorded graph on `example_input()` (cached; plans
        name them by path, compress() and size() use them)."""
        try:
            return self.find_structure()
        except AttributeError as err:  # nn.Module.__getattr__ would hide it as "no attribute"
            raise RuntimeError(f"finding the graph structure failed: {err}") from err

    def find_structure(self):  # noqa: ANN201 - workbench.graph.Structure
        """`graph_structure`, found on first call."""
        if self._structure is None:
            self._structure = discover(self, self.example_input())
            for i, block in enumerate(self.blocks):
                block._structure = _rebase(self._structure, f"blocks.{i}.")
        return self._structure

    def example_input(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Two utterances of different lengths (seeded noise): 1.0 s and 0.8 s."""
        gen = torch.Generator().manual_seed(0)
        if self.config.features == "waveform":
            return torch.randn(2, 1, 16000, generator=gen), torch.tensor([16000, 12800])
        return (torch.randn(2, self.config.n_mels, 100, generator=gen),
                torch.tensor([100, 80]))

    def stem(self, features: torch.Tensor, feat_lengths: torch.Tensor
             ) -> tuple[torch.Tensor, torch.Tensor]:
        c = self.config
        if features.dim() != 3 or features.shape[1] != c.n_mels:
            # a log-mel batch given to a waveform model would otherwise run, silently wrong
            want = ("the 16 kHz waveform as (batch, 1, samples): load_eval_set(manifest, "
                    "features='waveform')" if c.features == "waveform" else
                    f"log-mel features (batch, {c.n_mels}, frames): load_eval_set(manifest)")
            raise WorkbenchError(f"{c.source} (adapted) takes {want}; got a tensor of shape "
                                 f"{tuple(features.shape)}.")
        return self._stem(self.encoder, features, feat_lengths)

    def head(self, h: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        if self._final is not None:
            h = self._final(self.encoder, h)
        return self.ctc(h)


def _rebase(structure, prefix: str):  # noqa: ANN001, ANN202 - Structure -> Structure
    """The groups of `structure` under `prefix`, with paths and parameter names relative."""
    n = len(prefix)
    groups = tuple(
        replace(g, path=g.path[n:], axes=tuple((name[n:], d) for name, d in g.axes),
                units=tuple({(name[n:], d): idx for (name, d), idx in u.items()}
                            for u in g.units))
        for g in structure.groups if g.path.startswith(prefix))
    return replace(structure, groups=groups, refusals=())


# ---- torchaudio Conformer -----------------------------------------------------------------
def _conformer(model: nn.Module, ctc: nn.Module | None) -> dict[str, Any]:
    d = model.conformer_layers[0].ffn1.sequential[0].normalized_shape[0]

    def stem(enc: nn.Module, feats: torch.Tensor, lengths: torch.Tensor):
        return feats.transpose(1, 2), lengths               # (B, n_mels, T) -> (B, T, D)

    def call(layer: nn.Module, h: torch.Tensor, pad_mask: torch.Tensor) -> torch.Tensor:
        # torchaudio's ConformerLayer is time-first: (T, B, D), key_padding_mask (B, T)
        return layer(h.transpose(0, 1), pad_mask).transpose(0, 1)

    return dict(source="torchaudio Conformer", features="log_mel", n_mels=d, d_model=d,
                stem=stem, blocks=list(model.conformer_layers), call=call, final=None,
                roles=(("*.ffn[12]*", "ffn"), ("*.self_attn*", "attention"),
                       ("*.conv_module*", "conv"),
                       ("*layer_norm*", "norm"), ("ctc*", "head")),
                ctc=ctc)


# ---- torchaudio wav2vec2 / HuBERT ---------------------------------------------------------
def _wav2vec2(model: nn.Module, ctc: nn.Module | None) -> dict[str, Any]:
    transformer = model.encoder.transformer
    d = transformer.layer_norm.normalized_shape[0]

    def stem(enc: nn.Module, wave: torch.Tensor, lengths: torch.Tensor):
        x, out_lengths = enc.feature_extractor(wave[:, 0], lengths)      # (B, T', C)
        x = enc.encoder.feature_projection(x)
        pad = lengths_to_pad_mask(out_lengths, x.shape[1])
        x = x.masked_fill(pad[..., None], 0.0)  # as Encoder._preprocess zeroes padded frames
        return enc.encoder.transformer._preprocess(x), out_lengths

    def call(layer: nn.Module, h: torch.Tensor, pad_mask: torch.Tensor) -> torch.Tensor:
        b, t = pad_mask.shape  # Encoder._preprocess's additive mask: -10000 on padded keys
        mask = (-10000.0 * pad_mask[:, None, None, :].to(h.dtype)).expand(b, 1, t, t)
        return layer(h, mask)[0]

    def final(enc: nn.Module, h: torch.Tensor) -> torch.Tensor:
        tr = enc.encoder.transformer
        return h if tr.layer_norm_first else tr.layer_norm(h)

    # the output layer (aux) becomes the CTC head when it has the vocabulary's size; either way
    # it leaves the encoder: the adapted model never runs it, and a dead copy would be priced by
    # size() but dropped from the ONNX file (measured: 3,741 parameters on a d 128 model)
    aux, model.aux = model.aux, None
    if ctc is None and isinstance(aux, nn.Linear) and aux.out_features == len(VOCAB):
        ctc = aux
    return dict(source=f"torchaudio {type(model).__name__}", features="waveform", n_mels=1,
                d_model=d, stem=stem, blocks=list(transformer.layers), call=call, final=final,
                roles=(("encoder.feature_extractor*", "front-end"),
                       ("encoder.encoder.feature_projection*", "front-end"),
                       ("*pos_conv_embed*", "front-end"),
                       ("*.attention*", "attention"), ("*.feed_forward*", "ffn"),
                       ("*layer_norm*", "norm"), ("ctc*", "head")),
                ctc=ctc)


_READY = {"Conformer": _conformer, "Wav2Vec2Model": _wav2vec2}


def adapt(model: nn.Module, *, vocab: Sequence[str] | None = None,
          ctc_head: nn.Module | None = None,
          stem: Callable[[nn.Module, torch.Tensor, torch.Tensor],
                         tuple[torch.Tensor, torch.Tensor]] | None = None,
          blocks: str | None = None,
          block_call: Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]
          | None = None,
          d_model: int | None = None, features: str = "log_mel", n_mels: int = 80,
          roles: tuple[tuple[str, str], ...] = ()) -> AdaptedCTC:
    """`model` behind the workbench contract (see module doc). Ready adapters: torchaudio
    `Conformer` and `Wav2Vec2Model` (wav2vec2_model, HuBERT). Any other encoder: pass `stem`
    (encoder, features, lengths) -> (h (B, T, D), lengths), `blocks` (dotted path of its block
    list) and `d_model`; `block_call` (block, h, pad_mask) -> h when a block is not called as
    block(h, pad_mask). ArgumentError lists what is missing."""
    if not isinstance(model, nn.Module):
        raise ArgumentError(f"adapt(model=...): expected a torch model (nn.Module), got "
                            f"{type(model).__name__}.")
    if vocab is not None and tuple(vocab) != VOCAB:
        raise ArgumentError(f"adapt(vocab=...): the workbench decodes CTC over "
                            f"workbench.models.VOCAB ({len(VOCAB)} symbols: blank, space, "
                            f"apostrophe, a-z); got {len(tuple(vocab))} other symbols. Map your "
                            f"output layer to that vocabulary, or leave vocab=None.")
    if ctc_head is not None and not isinstance(ctc_head, nn.Module):
        raise ArgumentError(f"adapt(ctc_head=...): an nn.Module mapping (B, T, D) -> (B, T, "
                            f"{len(VOCAB)}), got {type(ctc_head).__name__}.")
    # one deepcopy of model and head together (a head that is part of the model stays so):
    # the adapter moves blocks and the output layer out of it, `.eval()` and head training
    # act on it; the caller's modules are never changed
    own, ctc_head = copy.deepcopy((model, ctc_head))
    own.eval()
    name = type(model).__name__
    if stem is None and blocks is None and name in _READY:
        spec = _READY[name](own, ctc_head)
    else:
        spec = _custom(own, name, stem, blocks, block_call, d_model, features, n_mels, roles,
                       ctc_head)
    untrained = spec["ctc"] is None
    if untrained:
        gen = torch.Generator().manual_seed(0)
        spec["ctc"] = nn.Linear(spec["d_model"], len(VOCAB))
        with torch.no_grad():  # seeded, so two adapt() calls give the same fresh head
            bound = spec["d_model"] ** -0.5
            spec["ctc"].weight.uniform_(-bound, bound, generator=gen)
            spec["ctc"].bias.uniform_(-bound, bound, generator=gen)
    config = AdaptedConfig(source=spec["source"], features=spec["features"],
                           n_mels=spec["n_mels"], d_model=spec["d_model"],
                           n_layers=len(spec["blocks"]), vocab_size=len(VOCAB),
                           untrained=untrained)
    adapted = AdaptedCTC(own, config, spec["stem"], spec["blocks"], spec["call"], spec["ctc"],
                         spec["roles"], spec["final"], _owned=True).eval()
    # groups found now, in the caller's thread, not lazily inside an engine or UI thread (and a
    # failure here is an error the caller sees, not an AttributeError hidden by nn.Module)
    adapted.find_structure()
    return adapted


def _custom(model: nn.Module, name: str, stem: Any, blocks: Any, block_call: Any,
            d_model: Any, features: str, n_mels: int, roles: Any, ctc: Any) -> dict[str, Any]:
    missing = []
    if not callable(stem):
        missing.append("stem=callable(encoder, features, lengths) -> (h (B, T, D), lengths)")
    if not isinstance(blocks, str):
        missing.append("blocks='dotted.path' of the encoder's block list (nn.ModuleList)")
    if not isinstance(d_model, int) or isinstance(d_model, bool) or d_model < 1:
        missing.append("d_model=int (width of h)")
    if missing:
        ready = ", ".join(f"torchaudio {k}" for k in _READY)
        raise ArgumentError(f"adapt(model={name}): no ready adapter for {name} (ready: {ready}),"
                            f" and these are missing: " + "; ".join(missing) + ".")
    try:
        block_list = model.get_submodule(blocks)
    except AttributeError as err:
        raise ArgumentError(f"adapt(blocks={blocks!r}): {name} has no submodule there "
                            f"({err}).") from None
    if not isinstance(block_list, (nn.ModuleList, nn.Sequential)) or len(block_list) == 0:
        raise ArgumentError(f"adapt(blocks={blocks!r}): expected a non-empty nn.ModuleList, "
                            f"got {type(block_list).__name__}.")
    if features not in ("log_mel", "waveform"):
        raise ArgumentError(f"adapt(features={features!r}): 'log_mel' or 'waveform'.")
    return dict(source=name, features=features, n_mels=n_mels if features == "log_mel" else 1,
                d_model=d_model, stem=stem, blocks=list(block_list),
                call=block_call or (lambda b, h, m: b(h, m)), final=None,
                roles=tuple(roles) + (("ctc*", "head"),), ctc=ctc)
