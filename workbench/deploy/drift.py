"""Drift monitor shipped with an export: numpy only (no torch, no workbench import), so this file
can be copied next to a deployed model and run there.

Per utterance it reads the log-mel features the model gets (n_mels, T) and the model's CTC
log-probabilities (T', vocab), and keeps five statistics:

    mel_mean[b], mel_var[b]   mean / variance of log-mel band b over time (channel, noise floor)
    blank_ratio               fraction of frames whose best token is the CTC blank
    entropy                   mean posterior entropy per frame (nats): the model's uncertainty
    speech_rate               non-blank tokens emitted per second (greedy CTC, repeats merged)
    low_band, band_edge       mean log-mel under 300 Hz, and in 3.4-4 kHz, minus the mean of
                              the 0.5-2.5 kHz bands: the edges of the telephone band (G.712),
                              which an RMS over all 80 bands dilutes (measured: telephone
                              versions were not flagged without these two)

Reference: each statistic's mean and standard deviation over reference utterances (the
calibration set). Score of an utterance, per group: RMS z-score over the bands for the two mel
groups, |z| for the three scalars. Each group's threshold is chosen leave-one-out on the
reference: the score of every reference utterance against the statistics of the others, and the
threshold is the largest of those times `margin`. An utterance is flagged when any group
exceeds its threshold; a stream (window of utterances) when the fraction flagged exceeds
`window_fraction` (the leave-one-out false-alarm rate plus a margin, see `fit`).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np

GROUPS = ("mel_mean", "mel_var", "blank_ratio", "entropy", "speech_rate", "low_band",
          "band_edge")
FORMAT = "workbench-drift-reference/1"


def mel_band(freq_hz: float, n_mels: int = 80, max_hz: float = 8000.0) -> int:
    """Index of the first mel band (Slaney scale, as Whisper's filters) centred at or above
    `freq_hz`."""
    def mel(f: float) -> float:      # Slaney: linear to 1 kHz, logarithmic above
        return f / (200.0 / 3) if f < 1000 else 15.0 + 27.0 * np.log(f / 1000.0) / np.log(6.4)
    centres = (np.arange(n_mels) + 1) * mel(max_hz) / (n_mels + 1)
    return int(np.searchsorted(centres, mel(freq_hz)))


def utterance_stats(log_mel: np.ndarray, log_probs: np.ndarray, blank: int = 0,
                    frames_per_second: float = 100.0) -> dict[str, np.ndarray]:
    """The five statistics of one utterance: log_mel (n_mels, T), log_probs (T', vocab)."""
    log_mel = np.asarray(log_mel, dtype=np.float64)
    log_probs = np.asarray(log_probs, dtype=np.float64)
    best = log_probs.argmax(-1)
    emitted = best[(best != blank) & np.concatenate([[True], best[1:] != best[:-1]])]
    seconds = max(log_mel.shape[1] / frames_per_second, 1e-3)
    band = log_mel.mean(1)
    n = len(band)
    mid = band[mel_band(500, n):mel_band(2500, n)].mean()
    return {"mel_mean": band, "mel_var": log_mel.var(1),
            "low_band": np.array([band[:max(mel_band(300, n), 1)].mean() - mid]),
            "band_edge": np.array([band[mel_band(3400, n):max(mel_band(4000, n),
                                                             mel_band(3400, n) + 1)].mean() - mid]),
            "blank_ratio": np.array([float((best == blank).mean())]),
            "entropy": np.array([float(-(np.exp(log_probs) * log_probs).sum(-1).mean())]),
            "speech_rate": np.array([len(emitted) / seconds])}


def _group_scores(stats: dict[str, np.ndarray], mean: dict[str, np.ndarray],
                  std: dict[str, np.ndarray]) -> dict[str, float]:
    return {g: float(np.sqrt(np.mean(((stats[g] - mean[g]) / std[g]) ** 2))) for g in GROUPS}


def _moments(rows: list[dict[str, np.ndarray]], floor: float
             ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    mean = {g: np.mean([r[g] for r in rows], axis=0) for g in GROUPS}
    std = {g: np.maximum(np.std([r[g] for r in rows], axis=0), floor) for g in GROUPS}
    return mean, std


@dataclass
class DriftMonitor:
    """Reference statistics + per-group thresholds (see the module docstring)."""

    mean: dict[str, np.ndarray]
    std: dict[str, np.ndarray]
    thresholds: dict[str, float]
    reference_utterances: int
    loo_false_alarm_rate: float
    window_fraction: float
    meta: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def fit(cls, rows: list[dict[str, np.ndarray]], margin: float = 1.1, std_floor: float = 1e-3,
            meta: dict[str, Any] | None = None) -> DriftMonitor:
        """Reference moments from `rows` (utterance_stats of each reference utterance) and
        leave-one-out thresholds: per group, `margin` x the largest held-out score."""
        if len(rows) < 5:
            raise ValueError(f"rows: need at least 5 reference utterances, got {len(rows)}.")
        loo = []
        for i in range(len(rows)):
            mean, std = _moments(rows[:i] + rows[i + 1:], std_floor)
            loo.append(_group_scores(rows[i], mean, std))
        thresholds = {g: margin * max(s[g] for s in loo) for g in GROUPS}
        mean, std = _moments(rows, std_floor)
        monitor = cls(mean, std, thresholds, len(rows), 0.0, 0.0, dict(meta or {}))
        # by construction no held-out reference utterance exceeds margin x the max: 0 here; the
        # window rule tolerates the false-alarm rate measured on clean held-out data (bench).
        monitor.window_fraction = 0.2
        return monitor

    def scores(self, stats: dict[str, np.ndarray]) -> dict[str, float]:
        return _group_scores(stats, self.mean, self.std)

    def check(self, stats: dict[str, np.ndarray]) -> dict[str, Any]:
        """{'drift': bool, 'groups': [groups over threshold], 'scores': {group: score / threshold}}"""
        ratio = {g: round(s / self.thresholds[g], 3) for g, s in self.scores(stats).items()}
        over = [g for g, r in ratio.items() if r > 1.0]
        return {"drift": bool(over), "groups": over, "scores": ratio}

    def check_window(self, rows: list[dict[str, np.ndarray]]) -> dict[str, Any]:
        """A stream of utterances: drifted when more than `window_fraction` of them are flagged."""
        flags = [self.check(r) for r in rows]
        frac = sum(f["drift"] for f in flags) / max(len(flags), 1)
        groups: dict[str, int] = {}
        for f in flags:
            for g in f["groups"]:
                groups[g] = groups.get(g, 0) + 1
        return {"drift": frac > self.window_fraction, "flagged_fraction": round(frac, 4),
                "utterances": len(flags), "groups": groups}

    def to_json(self) -> str:
        return json.dumps({"format": FORMAT, "groups": list(GROUPS),
                           "mean": {g: self.mean[g].tolist() for g in GROUPS},
                           "std": {g: self.std[g].tolist() for g in GROUPS},
                           "thresholds": self.thresholds,
                           "reference_utterances": self.reference_utterances,
                           "loo_false_alarm_rate": self.loo_false_alarm_rate,
                           "window_fraction": self.window_fraction, "meta": self.meta}, indent=1)

    @classmethod
    def from_json(cls, text: str) -> DriftMonitor:
        data = json.loads(text)
        if data.get("format") != FORMAT:
            raise ValueError(f"format: expected {FORMAT!r}, got {data.get('format')!r}.")
        return cls({g: np.asarray(v) for g, v in data["mean"].items()},
                   {g: np.asarray(v) for g, v in data["std"].items()},
                   {g: float(v) for g, v in data["thresholds"].items()},
                   int(data["reference_utterances"]), float(data["loo_false_alarm_rate"]),
                   float(data["window_fraction"]), dict(data.get("meta", {})))
