"""ExecuTorch export (`workbench apply --runtime executorch`): one .pte of a small Whisper-CTC
(int8 per the plan, XNNPACK), run in ExecuTorch's runtime; structure, numerics, size, report."""
import json

import pytest
import torch

from workbench.__main__ import build_parser, main
from workbench.export.apply import ApplyOptions
from workbench.export.reference_plans import int4_plan, int8_plan
from workbench.export.errors import UnsupportedBitsError
from workbench.models import build_model
from workbench.plan import CompressionPlan, LayerConfig, QuantConfig

pytest.importorskip("executorch")
# Lowering to XNNPACK takes ~1-3 min on a quiet 2-core host (most of it ExecuTorch's own
# passes), much longer beside other jobs: allow it (no time is asserted).
pytestmark = pytest.mark.timeout(2400)


@pytest.fixture(scope="module")
def small():
    torch.manual_seed(0)
    return build_model("whisper_ctc", d_model=64, n_heads=2, n_layers=1, d_ff=128, n_ctx=1500,
                       head_dim=32).eval()


@pytest.fixture(scope="module")
def applied(small, tmp_path_factory):
    """One export + verification (the slow part: ~1-3 min on a busy 2-core host)."""
    from workbench.export.apply_pte import apply_pte
    out = tmp_path_factory.mktemp("pte") / "out"
    options = ApplyOptions(eval_limit=3, latency_repeats=2, latency_seconds=1.0, threads=(1,),
                           parity_utterances=2, simulate_devices=False)
    report = apply_pte(small, int8_plan(), out, options)
    return out, report


def test_folder_has_the_pte_report_card_and_plan(applied):
    out, report = applied
    assert sorted(p.name for p in out.iterdir()) == ["MODEL_CARD.md", "model.pte", "plan.json",
                                                     "report.json"]
    assert json.loads((out / "report.json").read_text())["runtime"] == "executorch"
    card = (out / "MODEL_CARD.md").read_text()
    assert card.startswith("---\n") and "library_name: executorch" in card
    assert report["files"]["model.pte"]["bytes"] == (out / "model.pte").stat().st_size


def test_int8_layers_are_delegated_to_xnnpack(applied):
    _, report = applied
    assert report["ops"]["backends"] == ["XnnpackBackend"]
    assert report["ops"]["delegate_calls"] >= 1
    convs = {r["path"]: r for r in report["layers"] if r["kind"] == "conv"}
    assert convs["conv1"]["runs_as"].startswith("XNNPACK int8 dynamic")   # 1-D conv run as 2-D
    assert convs["ctc_head.dwconv"]["changes"]                           # depthwise: fp32, listed


def test_pte_runs_in_the_executorch_runtime_at_any_length(applied, small):
    from workbench.compress import compress
    from workbench.export.executorch import PteSession
    from workbench.onnx_tools.runtime import feature_feeds
    out, _ = applied
    session = PteSession((out / "model.pte").read_bytes())
    sim = compress(small, int8_plan())
    torch.manual_seed(1)
    for frames in (37, 120):
        feats = torch.randn(80, frames)
        with torch.no_grad():
            ref, ref_len = sim(feats[None], torch.tensor([frames]))
        log_probs, lengths = session.run(None, feature_feeds(feats))
        assert log_probs.shape == tuple(ref.shape) and int(lengths[0]) == int(ref_len[0])
        # int8 inputs at run time vs float inputs in the simulation: close, not equal
        assert float((torch.from_numpy(log_probs) - ref).abs().max()) < 0.5
        assert float((torch.from_numpy(log_probs).exp() - ref.exp()).abs().max()) < 0.05


def test_emulated_simulation_is_closer_to_the_pte(applied, small):
    # XNNPACK's per-row input quantization emulated on the simulation: closer to what
    # ExecuTorch's runtime computes than the plain simulation (float inputs). On average, not
    # in the worst frame: fp32 rounding differences flip a few int8 roundings, which cascade
    # (measured on 4 inputs: mean |diff| 2-3x smaller, max only 1.4-2.6x).
    from workbench.compress import compress
    from workbench.onnx_tools.runtime import feature_feeds
    from workbench.export.emulation import emulate_xnnpack_dynamic
    from workbench.compress.techniques.quantization_runtime import pte_decide
    from workbench.export.executorch import PteSession, _depthwise_fp32
    from workbench.export.structural import layer_quant
    out, _ = applied
    session = PteSession((out / "model.pte").read_bytes())
    sim = compress(small, int8_plan())
    decisions = [_depthwise_fp32(small, pte_decide(p, k, q))
                 for p, (k, q) in layer_quant(small, int8_plan()).items()]
    emulated = emulate_xnnpack_dynamic(sim, decisions)
    plain_diff = emu_diff = 0.0
    for seed in range(3):
        feats = torch.randn(80, 160, generator=torch.Generator().manual_seed(seed)) * 2
        log_probs = torch.from_numpy(session.run(None, feature_feeds(feats))[0])
        with torch.no_grad():
            plain_diff += float((log_probs - sim(feats[None], torch.tensor([160]))[0]).abs()
                                .mean())
            emu_diff += float((log_probs - emulated(feats[None], torch.tensor([160]))[0]).abs()
                              .mean())
    assert emu_diff < 0.6 * plain_diff


def test_report_compares_runtime_with_simulation_and_size(applied):
    _, report = applied
    assert report["parity"]["argmax_agreement"] > 0.9
    for row in report["accuracy"]:
        assert 0 <= row["wer_runtime"] and 0 <= row["wer_sim"]
        assert row["wer_abs_diff"] == pytest.approx(abs(row["wer_runtime"] - row["wer_sim"]),
                                                    abs=1e-4)
        assert row["wer_abs_diff_emulated"] == pytest.approx(
            abs(row["wer_runtime"] - row["wer_sim_runtime_emulated"]), abs=1e-4)
    assert "wer_sim_runtime_emulated" in report["accuracy_all_sets"]
    size = report["size"]
    # the program's graph (ops, shapes, XNNPACK subgraphs) is ~120 KB for this one-block model:
    # most of this tiny file, <1 % of the demo's (whose 5 % check is in `bench export`)
    assert size["size_prediction_bytes"] < size["model_bytes"] < size["size_prediction_bytes"] \
        + 160_000
    assert report["latency_ms"]["threads_1"]["model_ms"] > 0


def test_strict_refuses_4_bit_layers_before_exporting(small):
    from workbench.export.executorch import build_pte
    with pytest.raises(UnsupportedBitsError, match="--strict"):
        build_pte(small, int4_plan(small), strict=True)


def test_asymmetric_int8_is_listed_as_changed():
    from workbench.compress.techniques.quantization_runtime import pte_decide
    d = pte_decide("blocks.0.mlp.fc1", "linear",
                   QuantConfig(weight_bits=8, granularity="per_channel", symmetric=False))
    assert d.method == "int8_dynamic" and not d.exact and "symmetric" in d.changes[0]


def test_runtime_flag_is_parsed_and_bad_runtime_refused(tmp_path, capsys):
    plan = tmp_path / "p.json"   # must exist: the CLI checks the path while parsing
    plan.write_text("{}")
    out = str(tmp_path / "o")
    args = build_parser().parse_args(["apply", "--plan", str(plan), "--out", out,
                                      "--runtime", "executorch"])
    assert args.runtime == "executorch"
    try:   # main returns the exit code (argparse's SystemExit is turned into 2)
        code = main(["apply", "--plan", str(plan), "--out", out, "--runtime", "tflite"])
    except SystemExit as err:
        code = err.code
    assert code == 2 and "tflite" in capsys.readouterr().err


def test_cli_refuses_a_missing_plan_file(tmp_path, capsys):
    code = main(["apply", "--runtime", "executorch", "--plan", str(tmp_path / "none.json"),
                 "--out", str(tmp_path / "o")])
    assert code == 2 and "none.json" in capsys.readouterr().err


def test_plan_without_quantization_exports_fp32_decisions(small):
    from workbench.export.structural import layer_quant
    plan = CompressionPlan(default=LayerConfig(quant=QuantConfig(weight_bits=16)))
    from workbench.compress.techniques.quantization_runtime import pte_decide
    rows = [pte_decide(p, k, q) for p, (k, q) in layer_quant(small, plan).items()]
    assert rows and all(d.method == "fp32" and d.changes for d in rows)
