"""`workbench bench byo`: the workbench column on the HF-layout Whisper encoder (fast), and
Torch-Pruning's column when torch-pruning (requirements-test.txt) is installed."""
import pytest

from workbench.bench.byo import MODELS, run_torch_pruning, run_workbench


@pytest.fixture(scope="module")
def whisper_hf():
    return MODELS["whisper_hf"]()  # written to an HF-layout folder and read back


def test_workbench_prunes_hf_whisper_exactly_with_ort_parity(whisper_hf):
    model, example, expected = whisper_hf
    result = run_workbench(model, example, expected)
    assert result["exact"] and result["params_after"] == expected
    assert result["forward"] == "ok" and result["ort_parity_1e-4"]
    assert result["groups"] == {"neurons": 4, "heads": 4, "channels": 0}
    # Whisper's k_proj has no bias: the head slices exist on q, k, v weights and q, v biases
    changed = result["block0_shapes_changed"]
    assert "blocks.0.attn.k_proj.weight" in changed and "blocks.0.attn.k_proj.bias" not in changed


def test_torch_pruning_column_reports_its_documented_failure(whisper_hf):
    """Torch-Pruning 1.6.1 on the HF-layout Whisper (README, bench byo): the shapes and the
    parameter count come out right, but the attention's n_heads is not updated, so the pruned
    model's forward fails in the head reshape."""
    pytest.importorskip("torch_pruning")
    model, example, expected = whisper_hf
    result = run_torch_pruning(model, example, expected)
    assert result["outcome"] == "pruned model fails"
    assert result["params_after"] == expected and result["exact"]
    assert result["forward"].startswith("error: RuntimeError: shape")
    assert "blocks.0.attn.q_proj.weight" in result["block0_shapes_changed"]
