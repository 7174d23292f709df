"""Argument checks for the public verbs: one ArgumentError (or PlanError) naming the argument and
the fix, raised before any work or memory is spent. Used at the top of compress, size, profile,
evaluate, Session, predict_latency; kept here so every verb words the same mistake the same way.
"""
from __future__ import annotations

import difflib
import math
from collections.abc import Mapping
from typing import Any

from torch import nn

from workbench.errors import ArgumentError, PlanError
from workbench.plan import CompressionPlan
from workbench.presets import PRESETS

#: Longest audio a verb prices or profiles, for models without a fixed context: 10 minutes.
MAX_AUDIO_SECONDS = 600.0


def check_model(model: Any, verb: str, arg: str = "model") -> nn.Module:
    """The model argument must be a torch module (a CTCModel for most verbs)."""
    if not isinstance(model, nn.Module):
        hint = (" Load one first: workbench.load_demo(), conformer_ctc('tiny') or "
                "load_checkpoint(path).")
        if isinstance(model, str):
            hint = (f" A string is not a model: for a checkpoint file use "
                    f"workbench.load_checkpoint({model!r:.60}).")
        raise ArgumentError(f"{verb}({arg}=...): expected a torch model (nn.Module), got "
                            f"{_type(model)}.{hint}")
    return model


def check_plan(plan: Any, verb: str, arg: str = "plan"):
    """A CompressionPlan; a dict is validated as the plan's JSON fields (PlanError if bad)."""
    if isinstance(plan, CompressionPlan):
        return plan
    if isinstance(plan, Mapping):
        return CompressionPlan.model_validate(dict(plan))
    hint = ""
    if isinstance(plan, str):
        close = difflib.get_close_matches(plan, list(PRESETS), n=1, cutoff=0.3)
        hint = (f" For a preset use workbench.presets.{close[0]}()" if close else
                " For a preset use workbench.presets.<name>()")
        hint += "; for a plan file use workbench.plan.plan_from_file(path)."
    raise PlanError(f"{verb}({arg}=...): expected a CompressionPlan (or a dict of its JSON "
                    f"fields), got {_type(plan)}.{hint}")


_PLAN_FIELDS = {"format_version", "model_fingerprint", "default", "groups", "layers"}


def check_bits_or_plan(value: Any, verb: str, arg: str = "weight_bits") -> Any:
    """None, a CompressionPlan (a dict of plan fields becomes one), or {path or pattern: bits}."""
    if value is None or isinstance(value, CompressionPlan):
        return value
    if isinstance(value, Mapping):
        if value and set(value) <= _PLAN_FIELDS:
            return check_plan(value, verb, arg)
        for key, bits in value.items():
            if not isinstance(key, str) or isinstance(bits, bool) or not (
                    bits is None or bits in (2, 3, 4, 5, 6, 7, 8, 16, 32)):
                raise ArgumentError(f"{verb}({arg}=...): entry {key!r:.40}: {bits!r:.20} is not a "
                                    f"bit width; map module paths or patterns to 2..8, 16, 32 "
                                    f"or None, e.g. {{'blocks.*': 8}}.")
        return value
    return check_plan(value, verb, arg)


def check_seconds(value: Any, verb: str, arg: str = "audio_seconds",
                  max_seconds: float = MAX_AUDIO_SECONDS) -> float:
    """A finite duration in seconds, > 0 and <= max_seconds (checked before any allocation)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ArgumentError(f"{verb}({arg}=...): expected a number of seconds, got "
                            f"{_type(value)}.")
    if not math.isfinite(value) or not value > 0:
        raise ArgumentError(f"{verb}({arg}={value!r}): must be a finite number of seconds > 0.")
    if value > max_seconds:
        raise ArgumentError(f"{verb}({arg}={value!r}): longer than this model takes "
                            f"({max_seconds:g} s); price or profile a shorter window and scale, "
                            f"or split the audio.")
    return float(value)


def max_seconds_of(model: Any) -> float:
    """Longest input `model` accepts: Whisper's encoder has n_ctx positions at 50 Hz (30 s)."""
    n_ctx = getattr(getattr(model, "config", None), "n_ctx", None)
    if isinstance(n_ctx, int) and n_ctx > 0:
        return n_ctx * 2 / 100.0   # 2 mel frames per position, 100 mel frames per second
    return MAX_AUDIO_SECONDS


def check_choice(value: Any, choices: tuple[str, ...], verb: str, arg: str) -> str:
    """One of `choices`; a typo gets the closest name."""
    if isinstance(value, str) and value in choices:
        return value
    close = difflib.get_close_matches(str(value), list(choices), n=1, cutoff=0.5) \
        if isinstance(value, str) else []
    hint = f" Did you mean '{close[0]}'?" if close else ""
    raise ArgumentError(f"{verb}({arg}={value!r:.60}): must be one of "
                        f"{', '.join(repr(c) for c in choices)}.{hint}")


def check_int(value: Any, verb: str, arg: str, low: int = 1, high: int | None = None,
              none_ok: bool = False) -> int | None:
    """An int in [low, high] (bool refused), or None when `none_ok`."""
    if value is None and none_ok:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise ArgumentError(f"{verb}({arg}=...): expected an integer"
                            f"{' or None' if none_ok else ''}, got {_type(value)}.")
    if value < low or (high is not None and value > high):
        bound = f"{low}..{high}" if high is not None else f">= {low}"
        raise ArgumentError(f"{verb}({arg}={value}): must be {bound}"
                            f"{' (or None for all)' if none_ok else ''}.")
    return value


def check_bool(value: Any, verb: str, arg: str) -> bool:
    if not isinstance(value, bool):
        raise ArgumentError(f"{verb}({arg}=...): expected True or False, got {_type(value)}.")
    return value


def _type(value: Any) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text if len(text) <= 40 else text[:37] + '...'}"
