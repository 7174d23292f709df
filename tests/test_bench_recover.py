"""`workbench bench recover --json` end to end on the shipped demo: one case (windowed attention),
2 recovery steps on the shipped calibration manifest, held-out sets cut to their first 6
utterances (same audio, same names), the recovery cache in a temporary folder. Checks that the
row holds every figure issue 14 asks for, consistently (speed-up = base / case, ORT next to the
simulation), not the figures' values, which need minutes of recovery."""
import os
import time
from pathlib import Path

import pytest

from workbench.bench.recover import bench_recover, when_recovered
from workbench.paths import DATA_DIR

CALIB = DATA_DIR / "calib" / "manifest.jsonl"
SETS = {"real_test", "synth_test"}


@pytest.fixture
def short_sets_and_private_cache(tmp_path: Path, monkeypatch) -> None:
    from workbench import paths
    from workbench.data import read_manifest, write_manifest
    for name in ("REAL_TEST", "SYNTH_TEST"):
        short = write_manifest(read_manifest(getattr(paths, name))[:6],
                               tmp_path / "held_out" / name.lower() / "manifest.jsonl")
        monkeypatch.setattr(paths, name, short)
    monkeypatch.setenv("WORKBENCH_CACHE_DIR", str(tmp_path / "cache"))   # read at each call


def test_bench_recover_row_has_every_figure_of_the_issue(short_sets_and_private_cache):
    out = bench_recover(minutes=30.0, steps=2, cases=("d_windowed",), manifests=[CALIB],
                        time_repeats=1)
    assert set(out["host_profile"]) == {"calibrated", "calibrated_at", "error_band_pct"}
    row = out["cases"]["d_windowed"]
    assert row["swapped_blocks"] == [0, 1, 2, 3]
    for key in ("baseline_wer", "wer_before", "wer_after", "wer_sim_export", "wer_ort"):
        assert set(row[key]) == SETS, key
        assert all(0.0 <= v <= 3.0 for v in row[key].values()), key
    assert row["steps"] == 2 and row["minutes"] >= 0.0
    assert row["params_ratio"] == pytest.approx(1.0)          # a swap removes no parameter
    for name in SETS:                                          # ORT runs what was simulated
        assert abs(row["wer_ort"][name] - row["wer_sim_export"][name]) <= 0.005
        assert row["ort_minus_sim"][name] == pytest.approx(
            row["wer_ort"][name] - row["wer_sim_export"][name], abs=1e-4)
    assert row["export_inexact"] == {}
    for length in ("5s", "30s"):
        t = row["ort"][length]
        assert t["base_ms"] > 0 and t["case_ms"] > 0
        assert t["speedup"] == pytest.approx(t["base_ms"] / t["case_ms"], rel=0.01)
        assert t["predicted_speedup"] > 0 and "simulated" in t["predicted_source"]
    assert row["recovery_cached"] is False and row["load_recovery"] is not None
    assert Path(row["checkpoint"]).is_file()


def test_a_cached_recovery_says_so_and_when_it_was_written(tmp_path: Path):
    ckpt = tmp_path / "model.safetensors"
    ckpt.write_bytes(b"x")
    os.utime(ckpt, (1_700_000_000, 1_700_000_000))            # 2023-11-14 22:13:20 UTC
    cached = when_recovered(ckpt, time.time(), [1.0, 1.0, 1.0])
    assert cached == {"recovery_cached": True, "recovery_utc_start": None,
                      "recovery_utc_written": "2023-11-14 22:13:20", "load_recovery": None}
    fresh = when_recovered(ckpt, 1_600_000_000.0, [1.0, 2.0, 3.0])
    assert fresh["recovery_cached"] is False and fresh["load_recovery"] == [1.0, 2.0, 3.0]
