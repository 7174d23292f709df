"""`workbench recover` on the shipped demo model: prune, recover (2 steps on the shipped
calibration manifest, so CI needs no corpus), save, reload, export plan, refusals."""
import json
from pathlib import Path

import pytest

from workbench.__main__ import main
from workbench.export.reference_plans import pruned_int8_plan
from workbench.models import load_checkpoint, load_demo, model_fingerprint
from workbench.paths import DATA_DIR
from workbench.plan import CompressionPlan
from workbench.compress.resolution import resolve

CALIB = DATA_DIR / "calib" / "manifest.jsonl"
#: Utterances of each held-out set the recovery report evaluates here. The report's WERs are
#: only checked for their set names; the full sets (122 + 150 utterances, evaluated 2-4 times
#: per run on the demo model) were most of this file's time.
HELD_OUT_UTTERANCES = 6


@pytest.fixture(autouse=True)
def _short_held_out_sets(tmp_path: Path, monkeypatch) -> None:
    """Point workbench.paths' REAL_TEST / SYNTH_TEST (read by recovery._held_out_sets at call
    time) at the first few utterances of the real manifests, same audio, same set names."""
    from workbench import paths
    from workbench.data import read_manifest, write_manifest
    for name in ("REAL_TEST", "SYNTH_TEST"):
        short = write_manifest(read_manifest(getattr(paths, name))[:HELD_OUT_UTTERANCES],
                               tmp_path / "held_out" / name.lower() / "manifest.jsonl")
        monkeypatch.setattr(paths, name, short)


def test_recover_writes_a_loadable_pruned_checkpoint(tmp_path: Path, capsys):
    plan_file = tmp_path / "plan.json"
    plan_file.write_text(pruned_int8_plan().to_json())
    out = tmp_path / "recovered"
    code = main(["recover", "--plan", str(plan_file), "--out", str(out), "--steps", "2",
                 "--manifest", str(CALIB)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    report = json.loads(captured.out)
    assert report["steps"] == 2 and report["training_items"] > 40
    assert set(report["greedy_wer_before"]) == {"real_test", "synth_test"}
    model = load_checkpoint(report["checkpoint"])
    demo = load_demo()
    # 50 % of 1536 FFN neurons and 2 of 6 heads gone in every block.
    assert all(b.mlp.fc1.out_features == 768 and b.attn.n_heads == 4 for b in model.blocks)
    assert model_fingerprint(model) != model_fingerprint(demo)
    assert report["params"]["recovered"] == sum(p.numel() for p in model.parameters())
    export_plan = CompressionPlan.from_json(Path(report["export_plan"]).read_text())
    resolved = resolve(export_plan, model)
    assert resolved and all(c.quant is not None and c.quant.weight_bits == 8 and c.prune is None
                            for c in resolved.values())
    # An existing non-empty output folder is kept unless --force.
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    code = main(["recover", "--plan", str(plan_file), "--out", str(out), "--steps", "2",
                 "--manifest", str(CALIB)])
    err = capsys.readouterr().err
    assert code == 2 and "--force" in err
    assert before == {p.name: p.stat().st_mtime_ns for p in out.iterdir()}


def test_recover_refuses_a_corrupt_plan(tmp_path: Path, capsys):
    plan_file = tmp_path / "plan.json"
    plan_file.write_text('{\n  "format_version": 1,\n  "default": {"prune": {"amount": 1.2}}\n}\n')
    code = main(["recover", "--plan", str(plan_file), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and "plan.json:3: default.prune.amount" in err
    assert not (tmp_path / "o").exists()


def test_recover_refuses_a_plan_without_structure(tmp_path: Path, capsys):
    plan_file = tmp_path / "int8.json"
    plan_file.write_text(CompressionPlan.from_json(pruned_int8_plan().to_json())
                         .model_copy(update={"groups": ()}).to_json())
    code = main(["recover", "--plan", str(plan_file), "--out", str(tmp_path / "o"),
                 "--manifest", str(CALIB)])
    err = capsys.readouterr().err
    assert code == 2 and "removes no structure" in err and "workbench apply" in err
    assert not (tmp_path / "o").exists()


def test_recover_qat_on_a_quantization_only_plan(tmp_path: Path, capsys):
    """--qat trains for the plan's bit widths; without structure the checkpoint keeps the
    demo's shapes and the report gives the quantized WER before and after."""
    from workbench.plan import LayerConfig, QuantConfig
    plan_file = tmp_path / "int4.json"
    plan_file.write_text(CompressionPlan(default=LayerConfig(quant=QuantConfig(
        weight_bits=4, granularity="per_block"))).to_json())
    code = main(["recover", "--plan", str(plan_file), "--out", str(tmp_path / "o"), "--qat",
                 "--steps", "2", "--manifest", str(CALIB)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    report = json.loads(captured.out)
    assert report["qat"] is True and "quantization-aware" in report["how"]
    assert set(report["greedy_wer_after_quantized"]) == {"real_test", "synth_test"}
    assert set(report["greedy_wer_before_quantized"]) == {"real_test", "synth_test"}
    model = load_checkpoint(report["checkpoint"])
    assert model_fingerprint(model) == model_fingerprint(load_demo())


def test_recover_progressive_prunes_in_steps(tmp_path: Path, capsys):
    """--progressive: the same shapes and sparsity as one-shot, reached through pruning events;
    the unstructured masks survive the checkpoint."""
    from workbench.plan import LayerConfig, PruneConfig
    plan_file = tmp_path / "plan.json"
    plan_file.write_text(CompressionPlan().with_group("ffn", LayerConfig(prune=PruneConfig(
        amount=0.5, structure="neurons"))).with_layer("blocks.*.attn.out_proj", LayerConfig(
            prune=PruneConfig(amount=0.5, structure="unstructured"))).to_json())
    code = main(["recover", "--plan", str(plan_file), "--out", str(tmp_path / "o"), "--steps",
                 "3", "--progressive", "magnitude", "--manifest", str(CALIB)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    report = json.loads(captured.out)
    assert report["progressive"]["importance"] == "magnitude"
    assert len(report["pruning_events"]) == 8 and report["steps"] == 3
    assert sum(e["removed"] for e in report["pruning_events"]) == 4 * 768
    assert sum(e["masked"] for e in report["pruning_events"]) == 4 * 384 * 384 // 2
    model = load_checkpoint(report["checkpoint"])
    assert all(b.mlp.fc1.out_features == 768 for b in model.blocks)
    for b in model.blocks:
        mask = b.attn.out_proj.weight_mask
        assert int((~mask).sum()) == 384 * 384 // 2
        assert bool((b.attn.out_proj.weight[~mask] == 0).all())
