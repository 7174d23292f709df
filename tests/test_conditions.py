"""The conditions grid (workbench.conditions): seeded degradations, cached features, evaluation."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from workbench.conditions import (DEFAULT_GRID, FULL_GRID, Condition, ConditionError, degrade,
                                  evaluate_conditions, resolve_grid)
from workbench.conditions.grid import mulaw_8k
from workbench.data import write_manifest
from workbench.data.audio import save_flac
from workbench.data.manifest import Utterance



def wave(seconds: float = 1.0, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(int(16_000 * seconds)) / 16_000
    return 0.3 * torch.sin(2 * torch.pi * 220 * t) + 0.01 * torch.randn(t.numel(), generator=g)


def test_default_grid_has_at_least_12_conditions_and_names_are_unique() -> None:
    names = [c.name for c in DEFAULT_GRID]
    assert len(names) >= 12 and len(set(names)) == len(names)
    kinds = {c.kind for c in DEFAULT_GRID}
    assert kinds == {"clean", "noise", "reverb", "speed", "telephone", "mulaw"}
    assert {c.noise for c in DEFAULT_GRID if c.kind == "noise"} == {"white", "pink", "babble",
                                                                     "moh"}
    assert len(FULL_GRID) > len(DEFAULT_GRID)


@pytest.mark.parametrize("text", ["white:10", "babble:0", "reverb:0.6", "speed:0.9", "clean",
                                  "telephone", "mulaw", "moh:5", "pink:20"])
def test_parse_round_trips_through_the_name(text: str) -> None:
    cond = Condition.parse(text)
    assert resolve_grid([cond])[0] == cond


@pytest.mark.parametrize("text, fragment", [("purple:10", "unknown"), ("white:loud", "not a number"),
                                            ("reverb:9", "rt60_s"), ("speed:5", "speed factor"),
                                            ("clean:3", "unknown")])
def test_bad_condition_is_refused_naming_it(text: str, fragment: str) -> None:
    with pytest.raises(ConditionError, match=fragment):
        Condition.parse(text)


def test_duplicate_and_empty_grids_are_refused() -> None:
    with pytest.raises(ConditionError, match="duplicate"):
        resolve_grid(["white:10", "white:10"])
    with pytest.raises(ConditionError, match="empty"):
        resolve_grid([])


@pytest.mark.parametrize("snr", [20.0, 5.0, 0.0])
@pytest.mark.parametrize("noise", ["white", "pink", "babble", "moh"])
def test_noise_is_mixed_at_the_requested_snr(noise: str, snr: float) -> None:
    clean = 0.2 * wave(1.0)  # quiet enough that the mix stays below the 1.0 peak limit
    extra = {"babble": [wave(2.0, 1), wave(1.5, 2)], "moh": wave(5.0, 3)}
    out = degrade(Condition("noise", noise=noise, snr_db=snr), clean, "utt", **extra)
    residual = out - clean
    measured = 10 * torch.log10(clean.pow(2).sum() / residual.pow(2).sum())
    assert abs(float(measured) - snr) < 0.05


def test_degradation_is_seeded_per_utterance_and_independent_of_order() -> None:
    cond = Condition("noise", noise="white", snr_db=5)
    a = degrade(cond, wave(), "utt-a", seed=3)
    assert torch.equal(a, degrade(cond, wave(), "utt-a", seed=3))
    assert not torch.equal(a, degrade(cond, wave(), "utt-b", seed=3))
    assert not torch.equal(a, degrade(cond, wave(), "utt-a", seed=4))


def test_speed_changes_the_length_by_the_factor() -> None:
    for f in (0.9, 1.1):
        out = degrade(Condition("speed", factor=f), wave(2.0), "u")
        assert abs(out.numel() - 32_000 / f) <= 2


def test_mulaw_8k_keeps_length_and_loses_the_band_above_4khz() -> None:
    t = torch.arange(16_000) / 16_000
    high = 0.5 * torch.sin(2 * torch.pi * 6000 * t)
    out = mulaw_8k(high)
    assert out.numel() == high.numel() and out.pow(2).mean() < 0.01 * high.pow(2).mean()


def test_babble_comes_from_training_utterances_only() -> None:
    from workbench.conditions.sources import babble_sources
    from workbench.data import read_manifest
    from workbench.paths import CALIB

    train = [u for u in read_manifest(CALIB) if u.id.startswith("train-")]
    assert len(babble_sources()) == len(train) > 0


def _tiny_set(tmp_path: Path) -> Path:
    utts = []
    for i in range(3):
        path = tmp_path / "audio" / f"u{i}.flac"
        save_flac(path, wave(0.6 + 0.4 * i, i))
        utts.append(Utterance(audio_path=path, duration=0.6 + 0.4 * i, text="a tone", id=f"u{i}"))
    manifest = tmp_path / "manifest.jsonl"
    write_manifest(utts, manifest)
    return manifest


def _tiny_model():
    from workbench.models.whisper_ctc import WhisperCTC, WhisperCTCConfig
    torch.manual_seed(0)
    return WhisperCTC(WhisperCTCConfig(d_model=32, n_heads=2, n_layers=2, d_ff=64, n_ctx=400,
                                       head_dim=16)).eval()


def test_grid_runs_twice_with_identical_numbers_and_the_second_reads_the_cache(tmp_path) -> None:
    from workbench.presets import int8_everywhere

    manifest = _tiny_set(tmp_path)
    model = _tiny_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    grid = "clean,white:0,babble:5,reverb:0.3,speed:1.1,mulaw"
    kw = dict(grid=grid, manifest=manifest, voice_manifest=None, progress=False,
              cache_root=tmp_path / "cache")
    first = evaluate_conditions(model, int8_everywhere(), **kw)
    second = evaluate_conditions(model, int8_everywhere(), **kw)
    assert first.numbers() == second.numbers()
    assert first.conditions_from_cache == 0 and second.conditions_from_cache == 6
    assert [r.condition for r in first.rows] == [c.name for c in resolve_grid(grid)]
    assert all(r.plan_wer is not None and r.utterances == 3 for r in first.rows)
    assert {r.key for r in first.by_length} <= {"< 2 s", "2-4 s", ">= 4 s"}
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    table = first.markdown()
    assert table.count("\n") == len(first.rows) + 1 and "change (WER points)" in table


def test_a_run_for_another_plan_reuses_the_baseline_transcripts(tmp_path) -> None:
    """Through a BaselineCache the caller keeps (review 7, finding 29: it was a process-global
    cache that leaked between callers and tests): same numbers as a fresh transcription, nothing
    kept without one, and a cache made for another model is refused."""
    from workbench.conditions import BaselineCache
    from workbench.errors import ArgumentError
    from workbench.presets import int4_everywhere, int8_everywhere

    kw = dict(grid="clean,white:0", manifest=_tiny_set(tmp_path), voice_manifest=None,
              progress=False, cache_root=tmp_path / "c")
    model = _tiny_model()
    baselines = BaselineCache(model)
    first = evaluate_conditions(model, int8_everywhere(), baseline_cache=baselines, **kw)
    other = evaluate_conditions(model, int4_everywhere(), baseline_cache=baselines, **kw)
    fresh = evaluate_conditions(model, int4_everywhere(), **kw)
    assert (first.baselines_from_cache, other.baselines_from_cache) == (0, 2)
    assert fresh.baselines_from_cache == 0 and other.numbers() == fresh.numbers()
    assert other.hypotheses == fresh.hypotheses
    with pytest.raises(ArgumentError, match="another model"):
        evaluate_conditions(_tiny_model(), None, baseline_cache=baselines, **kw)


def test_plan_wer_equals_a_fresh_compress_and_evaluate(tmp_path) -> None:
    from workbench.compress import compress
    from workbench.presets import int8_everywhere
    from workbench.conditions import condition_sets
    from workbench.evaluate import evaluate

    manifest = _tiny_set(tmp_path)
    model = _tiny_model()
    res = evaluate_conditions(model, int8_everywhere(), grid="white:5", manifest=manifest,
                              voice_manifest=None, progress=False, cache_root=tmp_path / "c")
    (cond, es), = condition_sets("white:5", manifest, cache_root=tmp_path / "c",
                                 progress=False)[0]
    assert cond.name == "white 5 dB"
    direct = evaluate(compress(model, int8_everywhere()), es)
    assert res.rows[0].plan_wer == pytest.approx(direct.wer, abs=1e-9)


def test_cancel_stops_between_conditions(tmp_path) -> None:
    from workbench.conditions import Cancelled

    with pytest.raises(Cancelled):
        evaluate_conditions(_tiny_model(), None, grid="clean,white:0",
                            manifest=_tiny_set(tmp_path), voice_manifest=None, progress=False,
                            cache_root=tmp_path / "c", cancel=lambda: True)


def test_cli_bad_grid_exits_2_naming_the_condition(capsys) -> None:
    # in-process (the CLI's own main), as the bad-input suite does: no second torch start-up
    from workbench.__main__ import main
    code = main(["eval", "--conditions", "--grid", "white:10,purple:3"])
    err = capsys.readouterr().err
    assert code == 2
    assert "purple:3" in err and len(err.strip().splitlines()) == 1


def test_cli_plan_without_conditions_is_refused(tmp_path, capsys) -> None:
    plan = tmp_path / "p.json"   # an existing file, so the path check passes and --conditions is what fails
    plan.write_text("{}")
    from workbench.__main__ import main
    code = main(["eval", "--plan", str(plan)])
    assert code == 2 and "--conditions" in capsys.readouterr().err


def test_export_report_and_card_give_the_grid_from_the_onnx_model(tmp_path, monkeypatch) -> None:
    pytest.importorskip("onnxruntime")
    from workbench.presets import int8_everywhere
    from workbench.export.apply import ApplyOptions, apply_plan

    monkeypatch.setenv("WORKBENCH_CACHE_DIR", str(tmp_path / "cache"))
    manifest = _tiny_set(tmp_path)
    options = ApplyOptions(eval_manifests=(manifest,), latency_repeats=1, threads=(1,),
                           simulate_devices=False, conditions="clean,white:0")
    report = apply_plan(_tiny_model(), int8_everywhere(), tmp_path / "out", options)
    rows = report["conditions"]["rows"]
    assert [r["condition"] for r in rows] == ["clean", "white 0 dB"]
    assert all(0 <= r["wer_ort"] and r["utterances"] == 3 for r in rows)
    card = (tmp_path / "out" / "MODEL_CARD.md").read_text()
    assert "## Accuracy by condition" in card and "| white 0 dB | 3 |" in card
