"""`workbench bench drift --json`: the drift monitor fitted on the calibration set, tested on the
clean held-out sets (should not be flagged: false-alarm rate) and on drifted versions of them
(noise at 5 dB and 0 dB SNR, white or pink; telephone band 300-3400 Hz at 8 kHz): should be.

Conditions are made here with workbench.data.augment (add_noise, colored_noise, telephone);
the model's log-probs come from the demo model in PyTorch (fp32), batch 1.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from workbench.data import load_audio
from workbench.data.augment import add_noise, colored_noise, telephone
from workbench.deploy.drift import DriftMonitor, utterance_stats
from workbench.features import log_mel
from workbench.paths import CALIB

Condition = Callable[[torch.Tensor, torch.Generator], torch.Tensor]


def conditions() -> dict[str, Condition | None]:
    def noise(snr_db: float) -> Condition:
        def apply(wave: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
            exponent = float(torch.randint(0, 2, (1,), generator=gen))    # white or pink
            return add_noise(wave, colored_noise(wave.numel(), exponent, gen), snr_db)
        return apply

    return {"clean": None, "noise_5db": noise(5.0), "noise_0db": noise(0.0),
            "telephone": lambda wave, gen: telephone(wave)}


@torch.inference_mode()
def stats_of(model: torch.nn.Module, manifest: Path, condition: Condition | None,
             limit: int | None = None, seed: int = 0) -> list[dict[str, np.ndarray]]:
    """utterance_stats of every utterance of `manifest` under `condition` (batch 1)."""
    from workbench.data import read_manifest  # looked up per call: tests monkeypatch it

    gen = torch.Generator().manual_seed(seed)
    rows = []
    for utt in read_manifest(manifest)[:limit]:
        wave = load_audio(utt.audio_path)
        if condition is not None:
            wave = condition(wave, gen)
        feats = log_mel(wave)
        log_probs, _ = model(feats[None], torch.tensor([feats.shape[-1]]))
        rows.append(utterance_stats(feats.numpy(), log_probs[0].numpy()))
    return rows


def bench_drift(args: Any = None) -> dict[str, Any]:
    from workbench.models import load_demo  # looked up per call: tests monkeypatch it
    from workbench.paths import REAL_TEST, SYNTH_TEST  # looked up per call: tests monkeypatch it

    start = time.perf_counter()
    torch.set_num_threads(2)
    limit = getattr(args, "limit", None)
    model = load_demo()
    reference = stats_of(model, CALIB, None, limit)
    monitor = DriftMonitor.fit(reference, meta={"reference": str(CALIB)})
    out: dict[str, Any] = {"reference": {"manifest": str(CALIB), "utterances": len(reference)},
                           "thresholds": {g: round(t, 3) for g, t in monitor.thresholds.items()},
                           "window_fraction": monitor.window_fraction, "sets": {}}
    for manifest in (REAL_TEST, SYNTH_TEST):
        name = manifest.parent.name
        for cond_name, cond in conditions().items():
            rows = stats_of(model, manifest, cond, limit)
            window = monitor.check_window(rows)
            out["sets"][f"{name}/{cond_name}"] = window
    clean = [v for k, v in out["sets"].items() if k.endswith("/clean")]
    drifted = {k: v for k, v in out["sets"].items() if not k.endswith("/clean")}
    out["false_alarm_rate"] = round(
        sum(v["flagged_fraction"] * v["utterances"] for v in clean)
        / max(sum(v["utterances"] for v in clean), 1), 4)
    out["clean_sets_flagged"] = [k for k, v in out["sets"].items()
                                 if k.endswith("/clean") and v["drift"]]
    out["drifted_sets_missed"] = [k for k, v in drifted.items() if not v["drift"]]
    out["detection_rate_per_utterance"] = {k: v["flagged_fraction"] for k, v in drifted.items()}
    out["acceptance"] = {"clean_not_flagged": not out["clean_sets_flagged"],
                         "drifted_flagged": not out["drifted_sets_missed"]}
    out["definition"] = ("per utterance: flagged when any statistic group's score exceeds its "
                         "leave-one-out threshold on the calibration set; per set (window): "
                         "drift when more than window_fraction of its utterances are flagged; "
                         "false_alarm_rate = flagged fraction of the clean held-out utterances")
    out["seconds"] = round(time.perf_counter() - start, 1)
    return out
