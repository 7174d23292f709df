"""The search space: per-layer choices (weight bits, structured prune amount, low rank) -> a plan.

    space = SearchSpace.for_model(model, bits=(8, 4), prune=(0.0, 0.25, 0.5), ranks=(1.0, 0.5))
    space.genes                     # [Gene("blocks.0.attn.q_proj:bits", ...), ...] in model order
    plan = space.plan(params)       # params: {gene name: choice}; unset genes take the base value

Genes cover the targets inside the encoder blocks: every Linear / Conv gets a `bits` gene, every
attention / FFN / conv module a `prune` gene (heads / neurons / channels), and every FFN Linear a
`rank` gene (a fraction of min(in, out); 1.0 = dense). The stem and the CTC head keep the base
plan's settings (they hold few weights and are the most sensitive layers). The first choice of
every gene is the base setting, so the all-first-choices point is the base plan itself (by
default int8 everywhere, the reference a search has to beat).
"""
from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from workbench.presets import INT4, INT8, int8_everywhere
from workbench.compress.targets import find_targets
from workbench.errors import WorkbenchError
from workbench.plan import STRUCTURE_FOR_KIND, CompressionPlan, LayerConfig, PruneConfig, QuantConfig

#: Defaults: bits with a runtime kernel (int8 per channel, 4-bit block-wise MatMulNBits),
#: structured prune fractions, and low-rank fractions of min(in, out) (1.0 = dense).
BITS: tuple[int, ...] = (8, 4)
PRUNE: tuple[float, ...] = (0.0, 0.25, 0.5)
RANKS: tuple[float, ...] = (1.0, 0.5)


@dataclass(frozen=True)
class Gene:
    """One searched setting of one layer; `choices[0]` is the base plan's setting."""

    name: str            # "<path>:<knob>"
    path: str
    knob: str            # "bits" | "prune" | "rank"
    choices: tuple[Any, ...]
    full_rank: int = 0   # min(in, out) of a Linear, for "rank"
    kind: str = ""       # target kind ("attention", "ffn", "linear", ...)


def quant_for_bits(bits: int | None) -> QuantConfig:
    """The exportable layout for a bit width: 4-bit block-wise (MatMulNBits), else per channel."""
    if bits is None:
        return QuantConfig(weight_bits=None)
    if bits == 8:
        return INT8
    if bits == 4:
        return INT4
    return QuantConfig(weight_bits=bits)


@dataclass(frozen=True)
class SearchSpace:
    genes: tuple[Gene, ...]
    base: CompressionPlan = field(default_factory=int8_everywhere)

    @classmethod
    def for_model(cls, model: nn.Module, *, bits: Sequence[int] = BITS,
                  prune: Sequence[float] = PRUNE, ranks: Sequence[float] = RANKS,
                  base: CompressionPlan | None = None) -> SearchSpace:
        bits, prune, ranks = tuple(bits), tuple(float(p) for p in prune), tuple(map(float, ranks))
        for what, values in (("bits", bits), ("prune", prune), ("ranks", ranks)):
            if len(set(values)) != len(values):
                raise WorkbenchError(f"--{what}: {values} repeats a value; list each once.")
        for b in bits:
            if b not in (2, 3, 4, 5, 6, 7, 8, 16):
                raise WorkbenchError(f"--bits: {b} is not a supported width; use 2-8 or 16.")
        for p in prune:
            if not 0.0 <= p <= 0.95:
                raise WorkbenchError(f"--prune: {p:g} is outside 0..0.95.")
        for r in ranks:
            if not 0.0 < r <= 1.0:
                raise WorkbenchError(f"--ranks: {r:g} must be a fraction in (0, 1].")
        # First choice = base setting, so the all-first point is the base plan.
        bits = (8,) + tuple(b for b in bits if b != 8)
        prune = (0.0,) + tuple(p for p in prune if p != 0.0)
        ranks = (1.0,) + tuple(r for r in ranks if r != 1.0)
        genes: list[Gene] = []
        for path, target in find_targets(model).items():
            if target.block is None or not path.startswith("blocks."):
                continue
            if target.kind in STRUCTURE_FOR_KIND and len(prune) > 1:
                genes.append(Gene(f"{path}:prune", path, "prune", prune, kind=target.kind))
            elif target.kind in ("linear", "conv"):
                if len(bits) > 1:
                    genes.append(Gene(f"{path}:bits", path, "bits", bits, kind=target.kind))
                module = model.get_submodule(path)
                if (target.kind == "linear" and target.role == "ffn" and len(ranks) > 1):
                    full = min(module.in_features, module.out_features)
                    genes.append(Gene(f"{path}:rank", path, "rank", ranks, full, target.kind))
        if not genes:
            raise WorkbenchError("search space: the model has no block layers to search over, "
                                 "or every list (--bits, --prune, --ranks) has one value.")
        return cls(tuple(genes), base or int8_everywhere())

    def __len__(self) -> int:
        return len(self.genes)

    def base_params(self) -> dict[str, Any]:
        return {g.name: g.choices[0] for g in self.genes}

    def plan(self, params: Mapping[str, Any]) -> CompressionPlan:
        """The base plan plus one entry per layer whose genes differ from their base choice."""
        unknown = set(params) - {g.name for g in self.genes}
        if unknown:
            raise WorkbenchError(f"params: unknown genes {sorted(unknown)[:3]}.")
        per_path: dict[str, dict[str, Any]] = {}
        for g in self.genes:
            value = params.get(g.name, g.choices[0])
            if value == g.choices[0]:
                continue
            entry = per_path.setdefault(g.path, {})
            if g.knob == "bits":
                entry["quant"] = quant_for_bits(value)
            elif g.knob == "prune":
                entry["prune"] = PruneConfig(amount=float(value),
                                             structure=STRUCTURE_FOR_KIND[g.kind])
            else:
                entry["rank"] = max(1, int(round(value * g.full_rank)))
        plan = self.base
        for path, entry in per_path.items():
            plan = plan.with_layer(path, LayerConfig(**entry))
        return plan

    def initial_points(self, n: int, seed: int) -> list[dict[str, Any]]:
        """`n` starting points near the base plan: point i changes 1 + i % 3 random genes.

        NSGA-II's first generation is otherwise uniform over the space, which on a 40-gene space
        changes ~half the layers at once (WER far past any budget); children of sparse parents
        stay sparse (uniform crossover, 1/genes mutation), so the search walks out from the base.
        """
        rng = random.Random(seed)
        points = []
        for i in range(n):
            params = self.base_params()
            for g in rng.sample(self.genes, min(len(self.genes), 1 + i % 3)):
                params[g.name] = rng.choice(g.choices[1:])
            points.append(params)
        return points

    def key(self) -> str:
        """Fingerprint of the space (genes + base), for logs."""
        text = json.dumps([[g.name, list(g.choices), g.full_rank] for g in self.genes]
                          + [self.base.to_json()])
        return hashlib.sha1(text.encode()).hexdigest()[:12]

    def describe(self) -> dict[str, Any]:
        knobs: dict[str, int] = {}
        for g in self.genes:
            knobs[g.knob] = knobs.get(g.knob, 0) + 1
        return {"genes": len(self.genes), "by_knob": knobs,
                "choices": {g.knob: list(g.choices) for g in self.genes}, "key": self.key()}

