"""Checks of lesson 12 (autoregressive decoding cost)."""
from __future__ import annotations

import math
from collections.abc import Callable

from workbench.lessons import solutions as ref
from workbench.lessons.checks.core import CheckResult, _run


def check_whisper_ms(fn: Callable[[float, float, float, int], float]) -> CheckResult:
    """fn(encoder_ms, cross_kv_ms, per_token_ms, steps) -> ms for one utterance."""
    def compare(f: Callable) -> list[str]:
        problems = []
        # distinct magnitudes, so each common mistake gives a different number
        for args in ((120.0, 9.0, 30.0, 12), (40.0, 3.5, 11.0, 3), (900.0, 70.0, 5.0, 40)):
            enc, cross, tok, steps = args
            got, want = float(f(*args)), ref.whisper_ms(*args)
            if math.isclose(got, want, rel_tol=1e-9):
                continue
            hint = ""
            if math.isclose(got, enc + steps * (cross + tok), rel_tol=1e-9):
                hint = ("; the cross-attention keys/values of the encoder output are computed "
                        "once per utterance, not once per step")
            elif math.isclose(got, steps * (enc + cross + tok), rel_tol=1e-9):
                hint = "; the encoder runs once per utterance, only the decoder runs per step"
            elif math.isclose(got, enc + cross + tok, rel_tol=1e-9):
                hint = "; one decoder step per token: multiply the per-token time by the steps"
            problems.append(f"whisper_ms{args} = {got:.6g}, expected {want:.6g}{hint}")
        return problems
    return _run("whisper_ms", fn, ref.whisper_ms, compare)
