"""End to end on the shipped demo model: int8 export structure, size, and WER vs the simulation."""
from collections import Counter

import onnx
import pytest

from workbench.errors import CheckpointError
from workbench.evaluate import evaluate, load_eval_set, score
from workbench.export import build_export
from workbench.export.reference_plans import int8_plan
from workbench.export.positions import bytes_priced_elsewhere
from workbench.export.verify import evaluate_ort
from workbench.onnx_tools.runtime import make_session
from workbench.paths import REAL_TEST, SYNTH_TEST
from workbench.size import size

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def demo():
    from workbench.models import load_demo
    try:
        return load_demo()
    except CheckpointError as err:
        pytest.skip(f"demo model not trained: {err}")


def test_demo_int8_export(demo):
    plan = int8_plan()
    # int8.fp32 is the fp32 export of compress(demo, plan without quantization) = the demo itself
    # here: the same path build_export(demo, CompressionPlan()) takes, so no second demo export.
    int8 = build_export(demo, plan)
    ops = Counter(n.op_type for n in int8.proto.graph.node)
    assert ops["MatMulInteger"] == 26          # 4 blocks x 6 Linears + the 2 head Linears
    assert ops["DequantizeLinear"] == 3        # conv1, conv2, the head's depthwise conv
    table = int8.computed_tables[0]            # Whisper's positions: formula, bit-exact
    assert table.max_abs_diff == 0.0 and table.bytes_saved == 1500 * 384 * 4
    assert len(int8.fp32) / len(int8.model) >= 3.9
    predicted = size(demo, plan).total_bytes - bytes_priced_elsewhere(
        int8.computed_tables, set(demo.state_dict()))
    assert abs(len(int8.model) - predicted) / len(int8.model) < 0.02
    assert onnx.ModelProto.FromString(int8.model).graph.input[0].name == "features"

    # WER of the ORT model vs the simulation over both held-out sets (~1950 words). Greedy CTC
    # flips near-tie characters under tiny perturbations (the fp32 model and its weight-only
    # simulation transcribe ~18 % of utterances differently), so we allow 0.01 here; the bench
    # measured 0.0005.
    session = make_session(int8.model)
    refs, ort_hyps, sim_hyps = [], [], []
    for manifest in (REAL_TEST, SYNTH_TEST):
        eval_set = load_eval_set(manifest, progress=False)
        refs += list(eval_set.texts)
        ort_hyps += [r.hypothesis for r in evaluate_ort(session, eval_set).per_utterance]
        sim_hyps += [r.hypothesis for r in evaluate(int8.sim, eval_set).per_utterance]
    assert abs(score(refs, ort_hyps)[0] - score(refs, sim_hyps)[0]) <= 0.01
