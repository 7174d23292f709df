"""The linear-attention block selection (workbench.bench.linear_blocks) on a tiny model: the
greedy order follows the scores, and the selection never reads the held-out sets."""

import pytest
import torch

from workbench.bench.linear_blocks import attention_macs, greedy_sets, select_blocks, swap_plan
from workbench.compress import compress
from workbench.compress.swap_layers import KernelizedAttention
from workbench.train import Item

from toys import forbid_held_out, random_items


def _items(n: int = 16, seed: int = 0) -> list[Item]:
    return random_items(n, seed)


@pytest.fixture(scope="module")
def deep():
    """A random Whisper-CTC with 3 blocks (so the greedy step has a choice after the first)."""
    from workbench.models import build_model
    torch.manual_seed(0)
    return build_model("whisper_ctc", d_model=32, n_heads=2, n_layers=3, d_ff=64, n_ctx=100,
                       head_dim=16).eval()


def test_greedy_sets_follow_the_scores():
    """Per-block costs 3, 1, 2, 0 plus an interaction that makes {3, 0} worse than {3, 2}: the
    greedy path is (3), (2, 3), then the cheapest addition, and every call is cached."""
    cost = {0: 3.0, 1: 1.0, 2: 2.0, 3: 0.0}
    calls: list[tuple[int, ...]] = []

    def score(blocks):
        calls.append(blocks)
        penalty = 5.0 if {0, 3} <= set(blocks) or {1, 3} <= set(blocks) else 0.0
        return (sum(cost[b] for b in blocks) + penalty, 0.0)

    scores, nested = greedy_sets(4, score)
    assert nested == [(3,), (2, 3), (1, 2, 3), (0, 1, 2, 3)]
    assert len(calls) == len(set(calls)) == 4 + 3 + 2 + 1
    for k in range(1, 4):      # each step took the argmin among the sets extending the last one
        options = {s: v for s, v in scores.items()
                   if len(s) == k + 1 and set(nested[k - 1]) < set(s)}
        assert nested[k] == min(options, key=lambda s: (options[s], s))


def test_ties_go_to_the_lower_block_and_kd_breaks_wer_ties():
    scores, nested = greedy_sets(3, lambda b: (1.0, 0.5 if 2 in b else 1.0))
    assert nested[0] == (2,)                       # same WER, lower KD
    scores, nested = greedy_sets(3, lambda b: (1.0, 1.0))
    assert nested == [(0,), (0, 1), (0, 1, 2)]


def test_swap_plan_swaps_only_the_listed_blocks(deep):
    model = compress(deep, swap_plan([2, 0]))
    kinds = [isinstance(b.attn, KernelizedAttention) for b in model.blocks]
    assert kinds == [True, False, True]


def test_selection_never_reads_the_held_out_sets(deep, monkeypatch, tmp_path):
    """The held-out manifests point at nowhere and every eval-set / manifest loader fails the
    test if called; the selection on given items still runs, scores every greedy set, and its
    greedy path is the argmin of its own recorded scores."""
    forbid_held_out(monkeypatch, tmp_path)
    before = {k: v.clone() for k, v in deep.state_dict().items()}
    sel = select_blocks(deep, _items(), val_items=6, max_batch_frames=600)
    assert sel["val_items"] >= 6 and sel["train_items"] + sel["val_items"] == 16
    rows = {tuple(r["blocks"]): (r["val_wer"], r["val_kd"]) for r in sel["scored"]}
    assert len(rows) == 3 + 2 + 1
    path = [tuple(b) for b in sel["greedy"]]
    assert [len(b) for b in path] == [1, 2, 3]
    prev: set[int] = set()
    for chosen in path:
        options = {s: v for s, v in rows.items() if len(s) == len(prev) + 1 and prev < set(s)}
        assert chosen == min(options, key=lambda s: (options[s], s))
        prev = set(chosen)
    # A swap changes the outputs (KD > 0) and the teacher itself is untouched.
    assert all(kd > 0 for _, kd in rows.values())
    assert all(torch.equal(before[k], v) for k, v in deep.state_dict().items())


def test_attention_macs_fall_with_each_swapped_block():
    from workbench.models import build_model
    torch.manual_seed(0)
    model = build_model("whisper_ctc", d_model=32, n_heads=2, n_layers=3, d_ff=64, n_ctx=1500,
                        head_dim=16).eval()
    shares = [attention_macs(model, blocks)["attention_macs_removed"]
              for blocks in ((), (1,), (0, 1), (0, 1, 2))]
    assert shares[0] == 0 and shares[1] < shares[2] < shares[3] < 1
    assert shares[1] == pytest.approx(shares[3] / 3, abs=1e-3)   # equal blocks, equal shares


def test_bench_recover_e_linear_runs_every_block_and_the_chosen_set(deep):
    """Case e_linear of `bench recover` is measured three times by default, every block, block 1
    alone (the set bench linear-blocks chose) and blocks 1 and 2, each under its own row key and
    swapping exactly its blocks; the other cases run once and take no block set."""
    from workbench.bench.recover import LINEAR_SETS, case_plan, case_runs

    runs = case_runs(("c_qat4", "e_linear", "d_windowed"))
    assert runs == [("c_qat4", "c_qat4", None), ("e_linear", "e_linear", None),
                    ("e_linear_blocks_1", "e_linear", (1,)),
                    ("e_linear_blocks_1_2", "e_linear", (1, 2)), ("d_windowed", "d_windowed", None)]
    assert LINEAR_SETS == (None, (1,), (1, 2))
    assert case_runs(("e_linear",), [(2, 0), None]) == [
        ("e_linear_blocks_0_2", "e_linear", (0, 2)), ("e_linear", "e_linear", None)]
    for blocks, expected in ((None, [True, True, True]), ((1,), [False, True, False]),
                             ((2, 0), [True, False, True])):
        model = compress(deep, case_plan("e_linear", blocks)[0])
        assert [isinstance(b.attn, KernelizedAttention) for b in model.blocks] == expected
    assert case_plan("e_linear", (1,))[0] == swap_plan([1])
    with pytest.raises(ValueError, match="only e_linear"):
        case_plan("d_windowed", (1,))


def test_bench_recover_qat_case_is_the_exactly_exported_int4_preset():
    """Case c_qat4 trains for presets.int4_everywhere (front-end and CTC head int8): 4-bit
    per-block Conv weights are exported per-channel, so ORT would not run what QAT trained for
    (measured: ORT - simulated +0.014 / +0.036 WER). Every layer the plan quantizes exports
    exactly."""
    from workbench import presets
    from workbench.bench.recover import case_plan
    from workbench.export.decisions import decide
    from workbench.export.pipeline import layer_quant
    from workbench.models import build_model

    plan, kwargs = case_plan("c_qat4")
    assert plan == presets.int4_everywhere() and kwargs == {"qat": True}
    torch.manual_seed(0)
    model = build_model("whisper_ctc", d_model=32, n_heads=2, n_layers=2, d_ff=64, n_ctx=100,
                        head_dim=16).eval()
    layers = layer_quant(model, plan, False)
    decisions = [decide(path, kind, q) for path, (kind, q) in layers.items()]
    assert {d.kind for d in decisions} == {"linear", "conv"}
    assert [d.path for d in decisions if d.changes] == []
    assert {d.bits for d in decisions if d.kind == "linear"} >= {4}


def test_bench_recover_block_sets_from_the_command_line():
    """`--blocks all --blocks 2,0` reach bench_recover as linear_sets (None, (0, 2)); without
    --blocks the default sets stand."""
    from workbench import bench
    from workbench.__main__ import build_parser
    from workbench.bench.recover import LINEAR_SETS

    kwargs = bench.BENCHES["recover"][2]
    args = build_parser().parse_args(["bench", "recover", "--case", "e_linear",
                                      "--blocks", "all", "--blocks", "2,0"])
    assert kwargs(args)["linear_sets"] == (None, (0, 2))
    assert "linear_sets" not in kwargs(build_parser().parse_args(["bench", "recover"]))
    assert LINEAR_SETS == (None, (1,), (1, 2))


def test_bench_recover_refuses_a_block_the_demo_lacks_before_any_recovery():
    """A block index past the demo's 4 blocks is refused with the valid range, before anything
    is trained (the check follows loading the demo, which takes seconds, not minutes)."""
    from workbench.bench.recover import bench_recover
    from workbench.errors import ArgumentError

    with pytest.raises(ArgumentError, match=r"--blocks 1,4: the demo has blocks 0\.\.3"):
        bench_recover(minutes=0.01, cases=("e_linear",), linear_sets=[(1,), (1, 4)])
