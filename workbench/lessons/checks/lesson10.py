"""Checks of lesson 10 (noise at a chosen SNR)."""
from __future__ import annotations

import math
from collections.abc import Callable

import torch

from workbench.lessons import solutions as ref
from workbench.lessons.checks.core import (CheckResult, _gen, _run,
                                           _shape_problem)


def check_add_noise(fn: Callable[[torch.Tensor, torch.Tensor, float], torch.Tensor]) -> CheckResult:
    """fn(clean, noise, snr_db) -> clean + scaled noise at exactly that SNR."""
    def compare(f: Callable) -> list[str]:
        g = _gen(19)
        clean = torch.sin(torch.arange(16000) / 7.0) * 0.3
        noise = torch.randn(16000, generator=g) * 0.05
        problems = []
        for snr in (20.0, 5.0, 0.0, -5.0):
            out = torch.as_tensor(f(clean, noise, snr)).double()
            if (p := _shape_problem(f"SNR {snr}", out, clean.shape)):
                return [p]
            added = out - clean.double()
            measured = 10 * math.log10(float(clean.double().pow(2).mean())
                                       / float(added.pow(2).mean()))
            corr = float(torch.nn.functional.cosine_similarity(added, noise.double(), dim=0))
            if corr < 0.999:
                problems.append(f"SNR {snr}: what was added is not a scaled copy of the noise "
                                f"(cosine {corr:.3f})")
            elif abs(measured - snr) > 0.01:
                problems.append(f"SNR {snr} dB asked, {measured:.2f} dB measured "
                                f"(P = mean square; gain = sqrt(P_clean / (P_noise 10^(snr/10))))")
        return problems
    return _run("add_noise", fn, ref.add_noise, compare)
