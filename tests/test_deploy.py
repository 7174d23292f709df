"""Drift monitor (numpy only) on synthetic statistics, and verify-arm64's argument handling
(the emulated run itself is slow: `workbench verify-arm64`, not in make test)."""
import json

import numpy as np
import pytest

from workbench.__main__ import main
from workbench.deploy.drift import GROUPS, DriftMonitor, utterance_stats


def fake_utterance(rng, shift=0.0, frames=300, vocab=29):
    mel = rng.normal(-0.5 + shift, 0.4, size=(80, frames))
    logits = rng.normal(0, 1, size=(frames // 2, vocab))
    logits[:, 0] += 3.0                                    # mostly blank, like a CTC model
    log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    return mel, log_probs


def test_utterance_stats_shapes_and_ranges():
    mel, lp = fake_utterance(np.random.default_rng(0))
    s = utterance_stats(mel, lp)
    assert set(s) == set(GROUPS) and s["mel_mean"].shape == (80,) and s["mel_var"].shape == (80,)
    assert 0.0 <= s["blank_ratio"][0] <= 1.0
    assert 0.0 <= s["entropy"][0] <= np.log(29) + 1e-9
    assert s["speech_rate"][0] >= 0.0


def test_speech_rate_counts_merged_non_blank_tokens():
    lp = np.log(np.full((6, 3), 1e-6))
    for t, k in enumerate([0, 1, 1, 0, 2, 2]):            # tokens: 1, 2 -> 2 tokens
        lp[t, k] = 0.0
    s = utterance_stats(np.zeros((80, 100)), lp)           # 100 frames = 1 s
    assert s["speech_rate"][0] == pytest.approx(2.0)
    assert s["blank_ratio"][0] == pytest.approx(2 / 6)


def test_monitor_flags_shifted_audio_not_reference_like_audio():
    rng = np.random.default_rng(1)
    ref = [utterance_stats(*fake_utterance(rng)) for _ in range(40)]
    monitor = DriftMonitor.fit(ref)
    clean = [utterance_stats(*fake_utterance(rng)) for _ in range(40)]
    shifted = [utterance_stats(*fake_utterance(rng, shift=1.0)) for _ in range(40)]
    assert not monitor.check_window(clean)["drift"]
    window = monitor.check_window(shifted)
    assert window["drift"] and window["flagged_fraction"] > 0.9 and "mel_mean" in window["groups"]


def test_monitor_round_trips_through_json():
    rng = np.random.default_rng(2)
    monitor = DriftMonitor.fit([utterance_stats(*fake_utterance(rng)) for _ in range(10)])
    again = DriftMonitor.from_json(monitor.to_json())
    probe = utterance_stats(*fake_utterance(rng, shift=0.3))
    assert again.check(probe) == monitor.check(probe)


def test_fit_refuses_too_few_reference_utterances():
    rng = np.random.default_rng(3)
    with pytest.raises(ValueError, match="at least 5"):
        DriftMonitor.fit([utterance_stats(*fake_utterance(rng)) for _ in range(3)])


def test_from_json_refuses_another_format():
    with pytest.raises(ValueError, match="format"):
        DriftMonitor.from_json(json.dumps({"format": "something-else"}))


def test_drift_module_imports_no_torch():
    import subprocess
    import sys
    code = ("import sys, runpy; runpy.run_path('workbench/deploy/drift.py'); "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=__import__("pathlib").Path(__file__).resolve().parents[1])
    assert out.returncode == 0 and out.stdout.strip() == "False"


def test_verify_arm64_refuses_an_unknown_cpu(capsys):
    assert main(["verify-arm64", "--cpu", "pentium"]) == 2
    assert "--cpu pentium" in capsys.readouterr().err


def test_verify_arm64_refuses_a_zero_limit(capsys):
    assert main(["verify-arm64", "--limit", "0"]) == 2
    assert "--limit 0" in capsys.readouterr().err


def test_verify_arm64_refuses_a_missing_plan(tmp_path, capsys):
    assert main(["verify-arm64", "--plan", str(tmp_path / "nope.json")]) == 2
    assert "nope.json" in capsys.readouterr().err


def test_bench_drift_runs_from_the_bench_package():
    """`workbench bench drift` (workbench.bench.drift) on 5 utterances per set: the monitor is
    fitted on the calibration set and checked on both held-out sets under every condition."""
    from types import SimpleNamespace

    from workbench import bench
    out = bench.run("drift", SimpleNamespace(limit=5))
    assert out["reference"]["utterances"] == 5
    assert set(out["sets"]) == {f"{s}/{c}" for s in ("real_test", "synth_test")
                                for c in ("clean", "noise_5db", "noise_0db", "telephone")}
    assert all(v["utterances"] == 5 for v in out["sets"].values())
    assert 0.0 <= out["false_alarm_rate"] <= 1.0
