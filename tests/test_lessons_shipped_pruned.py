"""The recovered pruned demo that lesson 02b ends with (data/models/demo_pruned): the files are
there and small, the checkpoint loads with the plan's shapes, its report and provenance describe
the run that made it, and the stored float16 copy is the model that run measured (same greedy
WER on the held-out real prompts as its recovery report, within a float16 rounding margin)."""
from __future__ import annotations

import json
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHIPPED = REPO / "data" / "models" / "demo_pruned"
FILES = ("model.safetensors", "recovery.json", "export_plan.json", "plan.json", "provenance.json")
#: DESIGN.md keeps data/ under ~40 MB; this model is one of its larger files.
MAX_BYTES = 15_000_000


def _json(name: str) -> dict:
    return json.loads((SHIPPED / name).read_text())


def test_the_files_are_there_and_the_checkpoint_is_small() -> None:
    missing = [name for name in FILES if not (SHIPPED / name).is_file()]
    assert not missing, f"{SHIPPED}: missing {missing}"
    size = (SHIPPED / "model.safetensors").stat().st_size
    assert size < MAX_BYTES, f"model.safetensors is {size / 1e6:.1f} MB"


def test_it_loads_with_the_shapes_of_its_plan() -> None:
    from safetensors import safe_open

    import workbench

    model = workbench.load_checkpoint(SHIPPED / "model.safetensors")
    demo = workbench.load_demo()
    assert len(model.blocks) == len(demo.blocks)
    for block, ref in zip(model.blocks, demo.blocks):
        # 2 of 6 heads removed (64 each), half of the FFN neurons; the model width is kept
        assert block.attn.n_heads == ref.attn.n_heads - 2
        for proj in ("q_proj", "k_proj", "v_proj"):
            assert tuple(getattr(block.attn, proj).weight.shape) == (
                (ref.attn.n_heads - 2) * ref.attn.head_dim, ref.attn.q_proj.in_features)
        assert block.attn.out_proj.in_features == (ref.attn.n_heads - 2) * ref.attn.head_dim
        assert block.mlp.fc1.out_features == ref.mlp.fc1.out_features // 2
        assert block.mlp.fc2.in_features == ref.mlp.fc1.out_features // 2
        assert block.mlp.fc2.out_features == ref.mlp.fc2.out_features
    report = _json("recovery.json")
    params = sum(p.numel() for p in model.parameters())
    assert params == report["params"]["recovered"]
    assert report["params"]["teacher"] == sum(p.numel() for p in demo.parameters())
    assert params / report["params"]["teacher"] <= 0.60          # issue 14: at most 60 %
    with safe_open(str(SHIPPED / "model.safetensors"), framework="pt") as f:
        dtypes = {f.get_slice(name).get_dtype() for name in f.keys()}
    assert "F32" not in dtypes and "F16" in dtypes, f"stored as float16: {dtypes}"


def test_the_report_and_provenance_describe_the_progressive_run_of_its_plan() -> None:
    from workbench import CompressionPlan
    from workbench.bench.recover import case_plan

    plan = CompressionPlan.from_json((SHIPPED / "plan.json").read_text())
    assert plan == case_plan("a_progressive")[0]
    report, made = _json("recovery.json"), _json("provenance.json")
    assert report["progressive"]["importance"] == "taylor"
    assert "--progressive taylor" in made["command"] and "--steps" in made["command"]
    # provenance says truthfully what ended the run: its step budget (a result independent of
    # the machine's load), or its wall-clock budget (then a re-run differs)
    ended_by_steps = report["steps"] == report["config"]["steps"]
    assert made["ended_by"].startswith("step budget" if ended_by_steps else "wall-clock budget")
    assert json.loads((SHIPPED / "export_plan.json").read_text()) == json.loads(
        CompressionPlan().to_json())                # nothing left to quantize at export


def test_the_float16_copy_has_the_wer_its_run_measured() -> None:
    import workbench

    model = workbench.load_checkpoint(SHIPPED / "model.safetensors")
    eval_set = workbench.load_eval_set(workbench.REAL_TEST, progress=False)
    wer = workbench.evaluate(model, eval_set).wer
    recorded = _json("recovery.json")["greedy_wer_after"]["real_test"]
    assert abs(wer - recorded) <= 0.01, (wer, recorded)
    # recovery did its job at least partly: far better than the same shapes before it (lesson
    # 02b prints whether it is within +0.05 of the unpruned model; the target)
    assert wer < _json("recovery.json")["greedy_wer_before"]["real_test"] - 0.3


def test_ship_recovered_writes_a_float16_copy_that_loads_as_the_same_model(tmp_path: Path) -> None:
    """workbench.lessons.shipped on a small pruned Whisper-CTC in a `workbench recover`-like
    folder: same outputs after the float16 round trip (within fp16 rounding), same shapes, the
    report copied unchanged, provenance written."""
    import torch

    from workbench import CompressionPlan, LayerConfig, PruneConfig, compress
    from workbench.compress.distill import split_plan
    from workbench.lessons.shipped import ship_recovered
    from workbench.models import build_model, save_checkpoint

    torch.manual_seed(0)
    base = build_model("whisper_ctc", d_model=64, n_heads=4, n_layers=2, d_ff=128,
                       n_ctx=200).eval()
    plan = CompressionPlan().with_group("ffn", LayerConfig(prune=PruneConfig(
        amount=0.5, structure="neurons")))
    pruned = compress(base, plan)
    structure, rest = split_plan(plan, base, pruned)
    src = tmp_path / "recovered"
    src.mkdir()
    report = {"structure": json.loads(structure.to_json()), "steps": 3,
              "config": {"steps": 5, "max_minutes": 1.0}}
    save_checkpoint(pruned, src / "model.safetensors", structure=structure, dtype=torch.float32)
    (src / "recovery.json").write_text(json.dumps(report))
    (src / "export_plan.json").write_text(rest.to_json())
    made = ship_recovered(src, "workbench recover --steps 5 ...", dst=tmp_path / "shipped")
    assert made["ended_by"].startswith("wall-clock budget")     # 3 of 5 steps
    shipped = workbench_load(tmp_path / "shipped" / "model.safetensors")
    assert shipped.blocks[0].mlp.fc1.out_features == 64
    x, n = torch.randn(1, 80, 120), torch.tensor([120])
    with torch.no_grad():
        assert torch.allclose(shipped(x, n)[0], pruned(x, n)[0], atol=2e-2)
    assert json.loads((tmp_path / "shipped" / "recovery.json").read_text()) == report
    assert json.loads((tmp_path / "shipped" / "provenance.json").read_text()) == made


def workbench_load(path: Path):
    import workbench
    return workbench.load_checkpoint(path)
