"""workbench.search: space -> plan, fronts and hypervolume, the batch-deterministic NSGA-II search,
its trial log (resume, torn lines), the CLI contract, and that `import workbench` stays light."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from workbench.errors import WorkbenchError
from workbench.evaluate import EvalSet
from workbench.search import (EvaluatorSpec, SearchConfig, SearchSpace, hypervolume,
                              pareto_indices, search)
from workbench.search.front import dominates
from workbench.size import size


@pytest.fixture(scope="module")
def eval_set():
    gen = torch.Generator().manual_seed(1)
    feats = tuple(torch.randn(80, 100 + 30 * i, generator=gen) for i in range(4))
    return EvalSet("random", Path("/nonexistent"), ("a", "b", "c", "d"),
                   ("hello world", "press one", "thank you", "good bye"), feats)


@pytest.fixture(scope="module")
def spec(tiny_conformer, eval_set):
    return EvaluatorSpec(device="rpi5", audio_seconds=2.0, model=tiny_conformer,
                         eval_set=eval_set, quick_utterances=2, threads=1)


def test_import_workbench_loads_neither_ray_nor_optuna():
    code = ("import sys, workbench, workbench.search, workbench.search.cli; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('ray', 'optuna')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_space_base_point_is_the_base_plan_and_choices_change_bytes(tiny_conformer):
    space = SearchSpace.for_model(tiny_conformer, bits=(8, 4), prune=(0, 0.5), ranks=(1, 0.5))
    assert space.plan(space.base_params()) == space.base
    knobs = {g.knob for g in space.genes}
    assert knobs == {"bits", "prune", "rank"}
    assert all(g.path.startswith("blocks.") for g in space.genes)
    base_bytes = size(tiny_conformer, space.base).total_bytes
    for gene in space.genes[:6]:
        plan = space.plan({gene.name: gene.choices[-1]})
        assert list(plan.layers) == [gene.path]
        assert size(tiny_conformer, plan).total_bytes < base_bytes, gene.name
    rank_gene = next(g for g in space.genes if g.knob == "rank")
    entry = space.plan({rank_gene.name: 0.5}).layers[rank_gene.path]
    assert entry.rank == round(0.5 * rank_gene.full_rank)


@pytest.mark.parametrize("kwargs, field", [({"bits": (8, 1)}, "--bits"),
                                           ({"prune": (0, 1.5)}, "--prune"),
                                           ({"ranks": (0,)}, "--ranks"),
                                           ({"bits": (4, 4)}, "--bits")])
def test_bad_space_lists_name_the_option(tiny_conformer, kwargs, field):
    with pytest.raises(WorkbenchError, match=field):
        SearchSpace.for_model(tiny_conformer, **kwargs)


def test_pareto_indices_and_hypervolume_against_brute_force():
    import random
    rng = random.Random(0)
    for _ in range(30):
        pts = [[rng.randint(0, 5) for _ in range(3)] for _ in range(rng.randint(1, 12))]
        front = pareto_indices(pts)
        for i, p in enumerate(pts):
            dominated = any(dominates(q, p) for q in pts)
            first = pts.index(p) == i
            assert (i in front) == (not dominated and first)
        # Monte-Carlo-free check: grid count of dominated unit cells inside the box [0, 6)^3.
        cells = sum(1 for x in range(6) for y in range(6) for z in range(6)
                    if any(p[0] <= x and p[1] <= y and p[2] <= z for p in pts))
        assert hypervolume(pts, [6, 6, 6]) == pytest.approx(cells)
    assert hypervolume([[1, 1]], [2, 3]) == pytest.approx(2.0)


def _front(result):
    return [(t.number, t.best["wer"], t.best["size_bytes"], t.best["latency_ms"])
            for t in result.front]


def test_search_writes_the_front_and_a_log_and_resume_skips_finished_trials(spec, tmp_path):
    cfg = SearchConfig(trials=8, batch=4, seed=3, max_delta_wer=0.5)
    first = search(spec, cfg, space_options={"bits": (8, 4), "prune": (0, 0.5)},
                   out_dir=tmp_path)
    assert first.complete and len(first.trials) == 8
    doc = json.loads((tmp_path / "front.json").read_text())
    assert doc["front_size"] == len(first.front) >= 1
    for rec in doc["front"]:
        plan_text = (tmp_path / rec["plan_file"]).read_text()
        assert rec["eval"] == "full" and rec["size_bytes"] > 0 and rec["latency_ms"] > 0
        assert json.loads(plan_text)["format_version"] == 1
    lines = (tmp_path / "trials.jsonl").read_text().splitlines()
    header, records = json.loads(lines[0]), [json.loads(x) for x in lines[1:]]
    assert header["type"] == "header"
    assert len({(r["number"], r["kind"]) for r in records}) == len(records) == first.evaluated
    # The reference (trial 0) is the base plan: int8 everywhere.
    assert first.trials[0].params == first.space.base_params()

    # Resume with a torn last line: only that evaluation is redone, the front is the same.
    with open(tmp_path / "trials.jsonl", "a") as f:
        f.write('{"number": 99, "kin')
    again = search(spec, cfg, space_options={"bits": (8, 4), "prune": (0, 0.5)},
                   out_dir=tmp_path, resume=True)
    assert again.evaluated == 0
    assert _front(again) == _front(first)
    # Without --resume an existing log is refused; with other settings it is refused too.
    with pytest.raises(WorkbenchError, match="--resume"):
        search(spec, cfg, space_options={"bits": (8, 4), "prune": (0, 0.5)}, out_dir=tmp_path)
    with pytest.raises(WorkbenchError, match="other settings"):
        search(spec, SearchConfig(trials=8, batch=4, seed=4, max_delta_wer=0.5),
               space_options={"bits": (8, 4), "prune": (0, 0.5)}, out_dir=tmp_path, resume=True)


def test_a_search_cut_mid_batch_resumes_to_the_same_front(spec, tmp_path):
    cfg = SearchConfig(trials=8, batch=4, seed=1)
    opts = {"bits": (8, 4), "prune": (0, 0.5), "ranks": (1.0,)}
    whole = search(spec, cfg, space_options=opts, out_dir=tmp_path / "whole")
    log = tmp_path / "cut" / "trials.jsonl"

    def cancel():  # stops inside the second batch (header + 5 evaluations logged)
        return log.exists() and len(log.read_text().splitlines()) > 5
    cut = search(spec, cfg, space_options=opts, out_dir=tmp_path / "cut", cancel=cancel)
    assert not cut.complete
    logged = len((tmp_path / "cut" / "trials.jsonl").read_text().splitlines()) - 1
    assert 0 < logged < whole.evaluated
    resumed = search(spec, cfg, space_options=opts, out_dir=tmp_path / "cut", resume=True)
    assert resumed.complete and resumed.evaluated == whole.evaluated - logged
    assert _front(resumed) == _front(whole)


def test_budgets_mark_feasibility_and_none_feasible_is_said(spec, tmp_path):
    from workbench.search.api import summary
    cfg = SearchConfig(trials=4, batch=4, seed=0, max_size_bytes=1)
    result = search(spec, cfg, space_options={"bits": (8, 4), "prune": (0,), "ranks": (1,)})
    assert result.best_plan() is None
    doc = summary(result)
    assert doc["best_trial"] is None and "no plan found" in doc["verdict"]
    assert "size <= 1e-06 MB" in doc["verdict"]


@pytest.mark.parametrize("argv, field", [
    (["--trials", "0"], "--trials"), (["--batch", "1"], "--batch"),
    (["--max-delta-wer", "-1"], "--max-delta-wer"), (["--device", "nope"], "device"),
    (["--bits", "8,x"], "--bits"), (["--manifest", "/nonexistent.jsonl"], "--manifest"),
    (["--address", "127.0.0.1:1", "--executor", "serial"], "--address")])
def test_cli_bad_input_is_one_line_exit_2(tmp_path, argv, field):
    out = subprocess.run([sys.executable, "-m", "workbench", "search", "--out", str(tmp_path),
                          *argv], capture_output=True, text=True)
    assert out.returncode == 2, out.stderr
    assert field in out.stderr and "Traceback" not in out.stderr and out.stdout == ""


class _FakeRay:
    """The slice of the Ray API RayExecutor uses, on a 2-thread pool, with Ray's retry of a task
    whose worker died (the first attempt of `die_on` trial numbers raises WorkerDied). Checks the
    executor's own logic (log-as-finished, order, retries, cancel) where no real Ray can start."""

    class WorkerDied(Exception):
        pass

    def __init__(self, die_on=()):
        from concurrent.futures import ThreadPoolExecutor
        # One thread: Ray runs one evaluator per worker *process*; threads here would share one.
        self.pool = ThreadPoolExecutor(1)
        self.die_on, self.attempts, self.up = set(die_on), {}, False

    def is_initialized(self):
        return self.up

    def init(self, **kwargs):
        self.up = True

    def shutdown(self):
        self.up = False

    def cluster_resources(self):
        return {"CPU": 2.0}

    def put(self, value):
        from concurrent.futures import Future
        f = Future()
        f.set_result(value)
        return f

    def remote(self, num_cpus=1, max_retries=3):
        fake = self

        def wrap(fn):
            class Task:
                @staticmethod
                def remote(*args):
                    def run():
                        args_ = [a.result() if hasattr(a, "result") else a for a in args]
                        job = args_[-1]
                        for _attempt in range(max_retries + 1):
                            n = getattr(job, "number", None)
                            fake.attempts[n] = fake.attempts.get(n, 0) + 1
                            try:
                                if n in fake.die_on and fake.attempts[n] == 1:
                                    raise fake.WorkerDied(n)
                                return fn(*args_)
                            except fake.WorkerDied:
                                continue
                        raise RuntimeError("retries exhausted")
                    return fake.pool.submit(run)
            return Task
        return wrap

    def get(self, ref):
        return [r.result() for r in ref] if isinstance(ref, list) else ref.result()

    def wait(self, pending, num_returns=1, timeout=None):
        from concurrent.futures import FIRST_COMPLETED
        from concurrent.futures import wait as fwait
        done, rest = fwait(pending, timeout=timeout, return_when=FIRST_COMPLETED)
        done = [r for r in pending if r in done]
        return done, [r for r in pending if r not in done]

    def cancel(self, ref, force=False):
        ref.cancel()


def test_ray_executor_logic_on_a_fake_ray_matches_serial_and_retries(spec, tmp_path,
                                                                     monkeypatch):
    from workbench.search import RayExecutor, SearchSpace, run_search
    fake = _FakeRay(die_on={2, 5})
    monkeypatch.setitem(sys.modules, "ray", fake)
    cfg = SearchConfig(trials=8, batch=4, seed=2)
    opts = {"bits": (8, 4), "prune": (0, 0.5), "ranks": (1.0,)}
    serial = search(spec, cfg, space_options=opts, out_dir=tmp_path / "serial")
    space = SearchSpace.for_model(spec.model, **opts)
    ex = RayExecutor(spec, space, workers=2)
    assert ex.workers == 2
    result = run_search(spec.describe(), space, cfg, ex, log_path=tmp_path / "ray.jsonl")
    ex.close()
    assert _front(result) == _front(serial)
    assert fake.attempts[2] == 2 and fake.attempts[5] == 2      # died once, retried once
    records = [json.loads(x) for x in (tmp_path / "ray.jsonl").read_text().splitlines()[1:]]
    keys = [(r["number"], r["kind"]) for r in records]
    assert len(keys) == len(set(keys)) == result.evaluated


def test_sweep_covers_prune_bits_and_rank_with_savings(spec, tiny_conformer):
    from workbench.plan import CompressionPlan
    from workbench.search.sweep import sweep
    evaluator = spec.build()
    paths = ["blocks.0.ffn1", "blocks.0.ffn1.fc1"]
    doc = sweep(lambda plan, kind: evaluator(plan, kind), tiny_conformer, CompressionPlan(),
                sparsities=(0.5,), bits=(4,), ranks=(0.25,), paths=paths)
    got = {(c["path"], c["technique"], c["value"]) for c in doc["cells"]}
    assert got == {("blocks.0.ffn1", "prune", 0.5), ("blocks.0.ffn1.fc1", "quant", 4.0),
                   ("blocks.0.ffn1.fc1", "low_rank", 0.25)}
    for c in doc["cells"]:
        assert c["size_saved_bytes"] > 0, c           # every cell shrinks the model
        assert c["wer_delta"] == pytest.approx(c["wer"] - doc["base"]["wer"], abs=1e-6)
    pruned = next(c for c in doc["cells"] if c["technique"] == "prune")
    assert pruned["latency_saved_ms"] > 0           # structure removed: faster (simulated)


def test_recover_minutes_recovers_plans_that_remove_structure_and_measures_them(
        tiny_conformer, eval_set, tmp_path):
    """--recover-minutes: real recovery (distillation, a few seconds) of the searched plans that
    prune, their checkpoints written, WER after recovery measured on the whole eval set."""
    import copy
    from workbench.compress import compress
    from workbench.evaluate import evaluate
    from workbench.models import load_checkpoint
    from workbench.paths import CALIB
    from workbench.plan import CompressionPlan
    from workbench.recovery import removes_structure
    from workbench.search.recover import candidates

    # the random model's near-zero head emits only blanks (WER 1.0 for any weights): give it
    # weights that emit letters, and take its own transcripts as the references of two
    # utterances, so a WER tells one model from another
    emitting = copy.deepcopy(tiny_conformer)
    with torch.no_grad():
        torch.manual_seed(0)
        emitting.ctc_head.weight.normal_(0, 0.5)
    own = [u.hypothesis for u in evaluate(emitting, eval_set).per_utterance]
    texts = tuple(own[i] if i < 2 else t for i, t in enumerate(eval_set.texts))
    refs = EvalSet("random, own refs", eval_set.manifest, eval_set.ids, texts, eval_set.features)
    spec = EvaluatorSpec(device="rpi5", audio_seconds=2.0, model=emitting, eval_set=refs,
                         quick_utterances=2, threads=1)
    cfg = SearchConfig(trials=8, batch=4, seed=3, max_delta_wer=0.5)
    opts = {"bits": (8,), "prune": (0, 0.5), "ranks": (1.0,)}
    result = search(spec, cfg, space_options=opts, out_dir=tmp_path, recover_minutes=0.03,
                    recover_plans=2, recover_manifests=[CALIB])
    model = spec.load_model()
    picked = candidates(result, model, 2)
    assert picked and all(removes_structure(result.space.plan(t.params), model) for t in picked)
    assert [r["trial"] for r in result.recovered] == [t.number for t in picked]
    doc = json.loads((tmp_path / "front.json").read_text())
    assert doc["recovered"] == json.loads(json.dumps(result.recovered))
    base_wer = evaluate(model, spec.eval_set).wer
    for rec in doc["recovered"]:
        folder = tmp_path / f"recovered-{rec['trial']:04d}"
        assert (folder / "model.safetensors").is_file() and (folder / "export_plan.json").is_file()
        assert rec["utterances"] == len(spec.eval_set) and rec["steps"] >= 1
        # wer_after is the written recovered model's, with the written plan applied
        recovered = load_checkpoint(folder / "model.safetensors")
        export_plan = CompressionPlan.from_json((folder / "export_plan.json").read_text())
        wer = evaluate(compress(recovered, export_plan), spec.eval_set).wer
        assert rec["wer_after"] == pytest.approx(wer, abs=1e-6)
        assert rec["wer_delta_after"] == pytest.approx(wer - base_wer, abs=2e-6)
        assert rec["meets_budgets"] == (rec["wer_delta_after"] <= 0.5)
    assert "min of recovery" in doc["verdict"]


def test_sweep_map_plans_on_a_fake_ray_gives_the_serial_cells(spec, tiny_conformer, monkeypatch):
    """The RayExecutor.map_plans logic (order, progress, plan JSON round trip); the real Ray
    cluster run of `workbench sweep --address` is in tests/test_search_ray.py."""
    from workbench.plan import CompressionPlan
    from workbench.search import RayExecutor
    from workbench.search.sweep import sweep
    evaluator = spec.build()
    kw = dict(sparsities=(0.5,), bits=(4,), ranks=(0.25,),
              paths=["blocks.0.ffn1", "blocks.0.ffn1.fc1"])
    serial = sweep(lambda plan, kind: evaluator(plan, kind), tiny_conformer, CompressionPlan(),
                   **kw)
    monkeypatch.setitem(sys.modules, "ray", _FakeRay(die_on=set()))
    ex = RayExecutor(spec, None, workers=2)
    seen = []
    try:
        ray = sweep(None, tiny_conformer, CompressionPlan(), map_plans=ex.map_plans,
                    progress=lambda done, total: seen.append((done, total)), **kw)
    finally:
        ex.close()
    keys = ("path", "technique", "value", "wer", "size_bytes", "latency_ms")
    assert [{k: c[k] for k in keys} for c in ray["cells"]] == \
        [{k: c[k] for k in keys} for c in serial["cells"]]
    assert ray["base"] == serial["base"] and seen[-1] == (3, 3)


def test_search_prices_a_registered_swap_on_an_edge_device_as_predict_latency(tiny_conformer):
    """The search's edge pricer keys its trace cache on the registry's shape-changing settings,
    so a registered swap (grouped FFN) is traced, as predict_latency and the dashboard do."""
    from workbench.latency import predict_latency
    from workbench.plan import CompressionPlan, LayerConfig
    from workbench.search.objective import LatencyPricer
    pricer = LatencyPricer(tiny_conformer, "rpi5", 2.0)
    plan = CompressionPlan(layers={"blocks.0.ffn1": LayerConfig(grouped_ffn={"groups": 4})})
    got = pricer(plan).total_ms
    assert got == pytest.approx(predict_latency(tiny_conformer, "rpi5", 2.0, plan).total_ms,
                                rel=1e-9)
    assert got != pytest.approx(pricer(CompressionPlan()).total_ms, rel=1e-6)  # it is priced
