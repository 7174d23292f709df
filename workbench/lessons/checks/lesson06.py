"""Checks of lesson 06 (bytes of an int8 matrix)."""
from __future__ import annotations

from collections.abc import Callable

from workbench.lessons import solutions as ref
from workbench.lessons.checks.core import CheckResult, _run
from workbench.size import WeightSpec, storage_bytes


def check_int8_bytes(fn: Callable[[int, int, str], int]) -> CheckResult:
    """fn(out, in, granularity) -> bytes; compared with `workbench.size.storage_bytes`."""
    def compare(f: Callable) -> list[str]:
        problems = []
        for out, k, gran in ((1536, 384, "per_channel"), (384, 1536, "per_channel"),
                             (384, 384, "per_tensor")):
            got = f(out, k, gran)
            want = storage_bytes(WeightSpec(out, k, 8, gran))["dense"]
            if got != want:
                problems.append(f"{out} x {k}, {gran}: got {got!r}, the exporter stores {want:,} "
                                f"bytes (1 per weight + a 4-byte scale and a 1-byte zero point "
                                f"per group)")
        return problems
    return _run("int8_bytes", fn, ref.int8_bytes, compare)
