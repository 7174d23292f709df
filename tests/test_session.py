"""The interactive engine: same answers as the naive way, restarts where the change is, cancels."""
import threading

import pytest
import torch

from workbench.compress import compress
from workbench.evaluate import EvalSet, transcribe
from workbench.models import conformer_ctc
from workbench.plan import CompressionPlan, LayerConfig, PruneConfig, QuantConfig
from workbench.engine.session import Session


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    model = conformer_ctc("tiny").eval()
    # Feature-like inputs of varied lengths; the engine is compared with the naive path on the
    # same inputs, so their content does not matter, only that the model sees real shapes.
    feats = tuple(torch.randn(80, int(n)) for n in torch.randint(40, 260, (14,)))
    texts = tuple("the quick brown fox" for _ in feats)
    es = EvalSet("random", None, tuple(f"u{i}" for i in range(len(feats))), texts, feats)
    return model, es, Session(model, es, quick_utterances=6)


def _plan():
    return CompressionPlan().with_layer(
        "blocks.1.ffn1", LayerConfig(prune=PruneConfig(amount=0.5, structure="neurons")))


def test_engine_equals_naive_transcripts(setup):
    model, es, session = setup
    plan = _plan().with_layer("blocks.0.attn.q_proj", LayerConfig(quant=QuantConfig(weight_bits=4)))
    got = session.evaluate(plan, "full")
    naive = transcribe(compress(model, plan), es.features)
    assert list(got.hypotheses) == naive
    assert got.kind == "full" and got.stderr == 0.0 and got.utterances == len(es)


def test_restart_from_first_changed_block(setup):
    _, _, session = setup
    plan = _plan()
    first = session.evaluate(plan, "full")
    assert first.restart_block in (0, 1)  # block 1 changed: the cached input of block 1 is reused
    plan2 = plan.with_layer("blocks.1.ffn2.fc2", LayerConfig(quant=QuantConfig(weight_bits=8)))
    assert session.evaluate(plan2, "full").restart_block == 1
    # A change in the last block only: restart from that block's cached input.
    plan3 = CompressionPlan().with_layer("blocks.1.attn.v_proj",
                                          LayerConfig(quant=QuantConfig(weight_bits=6)))
    assert session.evaluate(plan3, "full").restart_block == 1


def test_quick_estimate_has_uncertainty_and_subset(setup):
    _, es, session = setup
    q = session.evaluate(_plan(), "quick")
    assert q.kind == "quick" and q.utterances == 6 < len(es)
    assert q.stderr >= 0.0 and "estimated" in q.source


def test_baseline_model_unchanged(setup):
    model, _, session = setup
    before = {k: v.clone() for k, v in session.baseline.state_dict().items()}
    session.evaluate(_plan().with_layer("blocks.0.ffn2.fc1", LayerConfig(rank=8)), "full")
    after = session.baseline.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_submit_delivers_only_the_newest(setup):
    _, _, session = setup
    delivered, errors = [], []
    done = threading.Event()
    plans = [CompressionPlan().with_layer("blocks.0.ffn1", LayerConfig(
        prune=PruneConfig(amount=a, structure="neurons"))) for a in (0.1, 0.2, 0.3, 0.4)]

    def on_result(r):
        delivered.append(r)
        if r.kind == "full":
            done.set()

    for p in plans:
        session.submit(p, on_result, errors.append)
    assert done.wait(60)
    session.wait(60)
    assert not errors
    from workbench.engine.session import plan_key
    assert delivered[-1].plan_key == plan_key(plans[-1])
    assert all(r.plan_key == plan_key(plans[-1]) for r in delivered if r.kind == "full")


def test_submit_runs_as_an_interactive_job_and_a_stale_queued_one_never_starts(setup,
                                                                                monkeypatch):
    """Requests are jobs of the engine's queue at INTERACTIVE priority (no thread of the
    session's own): while the queue's threads are busy, a request made stale by a newer one is
    cancelled in the queue and never runs; the newest delivers quick then full on a queue thread."""
    from workbench.engine.jobs import INTERACTIVE, USER, JobQueue
    from workbench.engine.session import plan_key
    _, _, session = setup
    queue = JobQueue("test-session-queue", workers=1)
    monkeypatch.setattr(session, "jobs", queue)
    release = threading.Event()
    blockers = []
    for priority in (USER, INTERACTIVE):   # the worker, then the queue's INTERACTIVE-only thread
        started = threading.Event()
        blockers.append(queue.submit(lambda j, s=started: (s.set(), release.wait(60)),
                                     priority=priority))
        assert started.wait(60)
    got, threads = [], []

    def on_result(r):
        got.append(r)
        threads.append(threading.current_thread().name)

    old, new = (CompressionPlan().with_layer("blocks.0.ffn1", LayerConfig(
        prune=PruneConfig(amount=a, structure="neurons"))) for a in (0.15, 0.35))
    session.submit(old, on_result, got.append)
    first = queue.pending()[0]
    session.submit(new, on_result, got.append)
    assert first.cancelled and first.state == "queued" and first.priority == INTERACTIVE
    release.set()
    session.wait(60)
    assert all(b.wait(60) for b in blockers) and first.wait(60) and first.state == "cancelled"
    assert [(r.kind, r.plan_key) for r in got] == [("quick", plan_key(new)), ("full", plan_key(new))]
    assert set(threads) == {"test-session-queue"}


def test_errors_are_delivered_not_swallowed(setup):
    _, _, session = setup
    errors, done = [], threading.Event()
    bad = CompressionPlan().with_layer("blocks.0.ffn1", LayerConfig(
        prune=PruneConfig(amount=0.5, structure="neurons", importance="taylor")))  # needs calib

    def on_error(e):
        errors.append(e)
        done.set()

    session.submit(bad, lambda r: done.set(), on_error)
    assert done.wait(60)
    session.wait(60)
    # Taylor importance without calibration data must raise a clear error, reported to on_error.
    assert errors and "calib" in str(errors[0]).lower()


def test_full_reuses_the_quick_part(setup):
    """The full set is the quick subset plus the rest; after a quick run of a plan, the full
    run only computes the rest (the quick part comes back from its cached final states)."""
    model, es, session = setup
    plan = CompressionPlan().with_layer("blocks.0.attn.k_proj",
                                         LayerConfig(quant=QuantConfig(weight_bits=5)))
    quick = session.evaluate(plan, "quick")
    full = session.evaluate(plan, "full")
    assert sorted(session.quick_indices) == session.quick_indices and len(session.quick_indices) == 6
    by_index = dict(enumerate(full.hypotheses))
    naive = transcribe(compress(model, plan), es.features)
    assert list(full.hypotheses) == naive
    assert list(quick.hypotheses) == [by_index[i] for i in session.quick_indices]


def test_batches_split_on_length_ratio():
    from workbench.evaluate import batches
    lengths = [100, 110, 124, 126, 200, 240, 260, 1000]
    groups = batches(lengths, max_frames=10_000, max_ratio=1.25)
    assert sorted(i for g in groups for i in g) == list(range(len(lengths)))
    for g in groups:
        assert max(lengths[i] for i in g) <= 1.25 * min(lengths[i] for i in g)
        assert max(lengths[i] for i in g) * len(g) <= 10_000
    assert groups[0] == [0, 1, 2] and groups[-1] == [7]
