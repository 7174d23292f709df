"""`workbench recover`: compress the demo (or a checkpoint) structurally, then recover accuracy
by distillation from the uncompressed model, and save the result as a checkpoint.

    recover_plan(plan, ...) -> RecoveryResult   (cached by plan + teacher + recipe)

The distillation training itself (loss, QAT, the Distiller cache) is workbench/compress/distill.py.

Training data: the demo's corpus (synthetic train sentences, real fine-tune prompts with one
augmented view each), built offline if missing (`workbench data build`); or any NeMo manifests.
The held-out sets are never trained on: a training manifest that lists any of their utterances
is refused (workbench.data.held_out, for every entry point). Quantization entries of the plan are
written to `export_plan.json`, for `workbench apply --checkpoint`; with `qat=True` recovery also
trains for them (quantization-aware, straight-through; then a plan without structure is fine too).

The progress bar (RecoveryBar) shows each step's loss and, when a `probe` set is given, the WER
estimate of the model being trained (WerProbe: the same estimate the dashboard's Recover tab
plots); `workbench recover` takes it from a validation split, never from the held-out sets.
"""
from __future__ import annotations

import hashlib
import json
import time
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from collections.abc import Callable

import torch
from tqdm import tqdm

from workbench.compress.progressive import ProgressiveConfig, progressive_recover
from workbench.compress.distill import RecoverConfig, recover, split_plan
from workbench.evaluate import EvalSet, evaluate
from workbench.plan import CompressionPlan
from workbench.train import FitHooks, Item
from workbench.compress.resolution import resolve
from workbench.compress.techniques import structure_only
from workbench.compress import compress
from workbench.data import build_all
from workbench.engine.jobs import BACKGROUND, JOBS, RUN_LOCK
from workbench.errors import ArgumentError, PlanError
from workbench.models import save_checkpoint
from workbench.paths import cache_dir

#: Defaults measured on the demo (2 cores, load ~2): 50 % FFN neurons + 2/6 heads pruned in every
#: block, greedy WER real / synthetic 1.83 / 1.52 before, 0.48 / 0.41 after 10 minutes (255 steps;
#: the budget, not the step count, ended it; the loss was still falling).
DEFAULT_CONFIG = RecoverConfig(steps=360, lr=5e-4, warmup=30, max_batch_frames=12_000,
                               max_minutes=10.0)


@dataclass(frozen=True)
class RecoveryResult:
    checkpoint: Path
    export_plan: Path
    report: dict[str, Any]


def recovery_items(manifests: list[Path] | None = None, n_synth: int = 1200, seed: int = 0,
                   progress: bool = True) -> list[Item]:
    """Log-mel + label items: the given manifests, or the demo corpus (built if missing).
    A manifest with any utterance of a held-out set is refused (workbench.data.held_out)."""
    from workbench.data import read_manifest  # looked up per call: tests monkeypatch it
    from workbench.data.held_out import refuse_held_out
    from workbench.recipes import _items

    if manifests:
        refuse_held_out(manifests, option="manifests")
        utts = [u for m in manifests for u in read_manifest(m)]
        feats, labels = _items(utts, 1, False, seed, "recovery features", progress)
    else:
        corpus = cache_dir() / "corpus"
        build_all(corpus, n_train=4000, seed=0)
        synth = read_manifest(corpus / "synth" / "train.jsonl")[:n_synth]
        real = read_manifest(corpus / "real" / "finetune.jsonl")
        f_s, l_s = _items(synth, 1, False, seed, "synthetic train features", progress)
        f_r, l_r = _items(real, 2, True, seed + 1, "real fine-tune features", progress)
        feats, labels = f_s + f_r, l_s + l_r
    return [Item(f, y) for f, y in zip(feats, labels)]


def _held_out_sets() -> dict[str, Any]:
    """The shipped held-out sets, features computed once (every WER of the report uses them)."""
    from workbench.evaluate import load_eval_set  # looked up per call: tests monkeypatch it
    from workbench.paths import REAL_TEST, SYNTH_TEST  # looked up per call: tests monkeypatch it
    return {name: load_eval_set(m, progress=False)
            for name, m in (("real_test", REAL_TEST), ("synth_test", SYNTH_TEST))}


def _wers(model: torch.nn.Module, sets: dict[str, Any],
          hold: Callable[[], AbstractContextManager] = nullcontext) -> dict[str, float]:
    """Greedy WER per set, each evaluation inside `hold()` (a run lock, or nothing)."""
    out = {}
    for name, eval_set in sets.items():
        with hold():
            out[name] = round(evaluate(model, eval_set).wer, 4)
    return out


@dataclass(frozen=True)
class Estimate:
    """Greedy WER of the model being trained at `step` (0: before training) on `utterances`
    utterances never trained on (`source` says which)."""

    step: int
    wer: float
    utterances: int
    source: str


class WerProbe(FitHooks):
    """fit's callbacks that estimate the WER of the model being trained: at the start and every
    `every` steps, greedy WER on `probe` (a small fixed set nobody trains on), given to
    `on_estimate`. The dashboard's watched job (workbench.engine.recovery_job) and the CLI's
    progress bar use this same estimate. Evaluating does not touch the random state training
    draws from (fit's own generator; eval mode has no dropout): a probed run trains exactly as
    an unprobed one."""

    def __init__(self, probe: EvalSet, every: int,
                 on_estimate: Callable[[Estimate], None] | None = None,
                 source: str | None = None) -> None:
        self.probe, self.every, self.on_estimate = probe, every, on_estimate
        self.model: torch.nn.Module | None = None
        self.estimates: list[Estimate] = []
        self.source = source or (f"estimate: greedy WER of the model being trained, on "
                                 f"{len(probe)} utterances of {probe.name}, never trained on")

    def on_start(self, model: torch.nn.Module) -> None:
        self.model = model
        self.estimate(0)

    def estimate(self, step: int) -> None:
        model = self.model
        was_training = model.training
        model.eval()
        try:
            wer = evaluate(model, self.probe).wer
        finally:
            model.train(was_training)
        e = Estimate(step, wer, len(self.probe), self.source)
        self.estimates.append(e)
        if self.on_estimate is not None:
            self.on_estimate(e)

    def after_step(self, step: int) -> None:
        if step % self.every == 0:
            self.estimate(step)


class RecoveryBar:
    """The CLI's progress bar: one line per run, `loss=` of the last step and `wer=` of the last
    estimate with the step it was taken at (`wer=0.512@20`), updated when it is computed. The
    count is the steps done, so an estimate taken after step k shows k/N even though fit hands
    over that step's losses just after it."""

    def __init__(self, total: int, desc: str = "recover") -> None:
        self.bar = tqdm(total=total, desc=desc, leave=True, dynamic_ncols=True)
        self.fields: dict[str, str] = {"loss": "-"}

    def _to(self, step: int) -> None:
        if step > self.bar.n:
            self.bar.update(step - self.bar.n)

    def step(self, entry: dict) -> None:
        self.fields["loss"] = f"{entry['loss']:.3f}"
        self.bar.set_postfix(self.fields, refresh=False)
        self._to(int(entry["step"]))
        self.bar.refresh()

    def estimate(self, e: Estimate) -> None:
        self.fields["wer"] = f"{e.wer:.3f}@{e.step}"
        self.bar.set_postfix(self.fields, refresh=False)
        self._to(e.step)
        self.bar.refresh()                    # shown when computed

    def close(self) -> None:
        self.bar.close()


def validation_probe(manifests: list[Path] | None, val_manifest: Path | None,
                     limit: int = 16) -> EvalSet | None:
    """The set the CLI's WER estimate is computed on: `val_manifest` (first `limit`
    utterances), else, when training on the demo corpus (no `manifests`), its synthetic `dev`
    split (never trained on); None when training on other manifests without a validation one.
    The held-out test sets are refused: the estimate is watched while training, and a number
    you tune by must not come from the sets the results are reported on."""
    from workbench.data.held_out import refuse_held_out, shared_utterances
    from workbench.evaluate import load_eval_set  # looked up per call: tests monkeypatch it
    if val_manifest is None:
        if manifests:
            return None
        val_manifest = cache_dir() / "corpus" / "synth" / "dev.jsonl"
        if not val_manifest.is_file():
            build_all(cache_dir() / "corpus", n_train=4000, seed=0)
    refuse_held_out([val_manifest], option="--val-manifest",
                    use="the WER estimate watched while training (a validation split, e.g. the "
                        "demo corpus's synth/dev.jsonl)")
    shared = shared_utterances(val_manifest, manifests or ())
    if shared is not None:
        other, n, total, example, how = shared
        raise ArgumentError(f"--val-manifest {val_manifest}: {n} of its {total} utterances are "
                            f"also in the training manifest {other} (e.g. '{example[:60]}': "
                            f"{how}); the estimate must come from utterances never trained on.")
    return load_eval_set(val_manifest, limit=limit, progress=False,
                         name=f"validation ({Path(val_manifest).parent.name}/"
                              f"{Path(val_manifest).name})")


def removes_structure(plan: CompressionPlan, model: torch.nn.Module) -> bool:
    """True when `plan` prunes or factorizes some layer of `model` (recovery has work to do)."""
    return any(not structure_only(c).is_empty() for c in resolve(plan, model).values())


def recover_plan(plan: CompressionPlan, teacher: torch.nn.Module | None = None,
                 out_dir: Path | None = None, config: RecoverConfig | None = None,
                 manifests: list[Path] | None = None, teacher_name: str = "demo",
                 progress: bool = True, evaluate_sets: bool = True,
                 log: Callable[[dict], None] | None = None, qat: bool = False,
                 progressive: ProgressiveConfig | None = None, hooks: FitHooks | None = None,
                 run_lock: Callable[[], AbstractContextManager] | None = None,
                 probe: EvalSet | None = None, probe_every: int = 10) -> RecoveryResult:
    """Prune / factorize `teacher` (default: the demo) by `plan`, recover it, save it.

    With `out_dir` None the result lives in the user cache, keyed by plan + teacher weights +
    recipe, and a second call returns it without training (so does an `out_dir` holding the
    result of the same call; the key is computed before anything is built or trained). `log`
    gets every training step's losses (for progress bars). `progressive`: prune the plan's
    heads / neurons / channels / unstructured weights in steps while distilling
    (workbench.compress.progressive) instead of one-shot before recovery. `hooks`: callbacks
    of the training loop (workbench.train.FitHooks, e.g. a cancel check of an engine job).
    `run_lock()`: a context held around each model run (the training, each held-out
    evaluation), not around data building; an engine job passes its run lock.
    `probe` (an EvalSet never trained on; with `hooks` None): a WER estimate of the model being
    trained every `probe_every` steps (WerProbe), shown in the progress bar (RecoveryBar) next
    to the loss and kept in the report as "estimates".
    `manifests` listing any utterance of a held-out set are refused (DataError) before the
    teacher is loaded (workbench.data.held_out).
    """
    from workbench.data.held_out import refuse_held_out
    from workbench.models import load_demo  # looked up per call: tests monkeypatch it

    refuse_held_out(manifests, option="manifests")   # before any model is loaded or trained
    if probe is not None and hooks is not None:
        raise ArgumentError("recover_plan: give probe= or hooks=, not both (an engine job's "
                            "hooks estimate WER themselves: workbench.engine.recovery_job).")
    cfg = config or DEFAULT_CONFIG
    hold = run_lock or nullcontext
    teacher = teacher if teacher is not None else load_demo()
    # The plan's structure (energy settings as given) without its quantization, which is
    # applied at export or trained for with qat: enough for the cache key.
    structure, rest = split_plan(plan, teacher, None)
    if not structure.layers and not (qat and rest.layers):
        raise PlanError("recover: the plan removes no structure (no pruning, no low rank); a "
                        "quantization-only plan needs no recovery: run `workbench apply` on it, "
                        "or train for its bit widths with --qat.")
    weights = hashlib.sha1()
    for name, tensor in sorted(teacher.state_dict().items()):
        weights.update(name.encode())
        weights.update(tensor.detach().float().numpy().tobytes())
    # Recipe knobs at their defaults stay out of the key: results cached before they existed
    # (same recipe) are found again.
    config_key = {k: v for k, v in asdict(cfg).items()
                  if not (k in ("train", "block_weights") and v == getattr(RecoverConfig(), k))}
    key = {"structure": structure.to_json(), "config": config_key,
           "teacher": weights.hexdigest(), "manifests": [str(m) for m in manifests or []]}
    if qat:
        key["qat"] = rest.to_json()
    if progressive is not None:
        if qat:
            raise PlanError("recover: progressive pruning and --qat in one run are not "
                            "supported yet; recover progressively, then run QAT on the result.")
        key["progressive"] = asdict(progressive)
    tag = hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
    out = Path(out_dir) if out_dir is not None else cache_dir() / "recovered" / tag
    checkpoint, export_plan, report_file = (out / "model.safetensors", out / "export_plan.json",
                                            out / "recovery.json")
    if checkpoint.is_file() and report_file.is_file():
        report = json.loads(report_file.read_text())
        if report.get("tag") == tag:
            return RecoveryResult(checkpoint, export_plan, report)
    # The one-shot student; split_plan reads the ranks an energy setting got.
    student = compress(teacher, structure)
    structure, _ = split_plan(plan, teacher, student)
    start = time.perf_counter()
    items = recovery_items(manifests, seed=cfg.seed, progress=progress)
    t_data = time.perf_counter() - start
    sets = _held_out_sets() if evaluate_sets else {}

    def wers(model: torch.nn.Module) -> dict[str, float]:
        return _wers(model, sets, hold)

    before = wers(student)
    bar = RecoveryBar(cfg.steps, "progressive" if progressive is not None else "recover") \
        if progress else None
    if probe is not None:
        hooks = WerProbe(probe, probe_every, bar.estimate if bar is not None else None)
    on_step = log
    if bar is not None:
        def on_step(entry: dict) -> None:
            bar.step(entry)
            if log is not None:
                log(entry)
    try:
        with hold():   # an engine job's hooks release it between two steps
            if progressive is not None:
                result = progressive_recover(teacher, structure, items, cfg, progressive,
                                             progress=False, log=on_step, hooks=hooks)
            else:
                result = recover(student, teacher, items, cfg, progress=False, log=on_step,
                                 quant=rest if qat else None, hooks=hooks)
    finally:
        if bar is not None:
            bar.close()
    after = wers(result.model)
    quantized = wers(compress(result.model, rest, force=True)) if rest.layers else {}
    quantized_before = wers(compress(student, rest, force=True)) if rest.layers else {}
    report = {
        "tag": tag, "teacher": teacher_name,
        "structure": json.loads(structure.to_json()),
        "params": {"teacher": sum(p.numel() for p in teacher.parameters()),
                   "recovered": sum(p.numel() for p in result.model.parameters())},
        "greedy_wer_before": before, "greedy_wer_after": after,
        "greedy_wer_before_quantized": quantized_before,
        "greedy_wer_after_quantized": quantized, "qat": qat,
        "teacher_greedy_wer": wers(teacher),
        "training_items": len(items), "steps": len(result.history),
        "progressive": asdict(progressive) if progressive is not None else None,
        "pruning_events": list(result.events),
        "minutes": round(result.history[-1]["seconds"] / 60, 2) if result.history else 0.0,
        "final_loss": result.history[-1] if result.history else None,
        "estimates": ([asdict(e) for e in hooks.estimates] if isinstance(hooks, WerProbe)
                      and probe is not None else None),
        "config": asdict(cfg),
        "seconds": {"data": round(t_data, 1), "total": round(time.perf_counter() - start, 1)},
        "machine": f"{torch.get_num_threads()} threads, torch {torch.__version__}",
        "how": ("progressive pruning (cubic schedule, importance re-scored) + " if progressive
                else "") + "layer-wise distillation (block outputs MSE / teacher variance) + KL on CTC "
               "posteriors + 0.2 CTC; front-end frozen (workbench.compress.distill)"
               + ("; quantization-aware (straight-through) for the plan's weight bits" if qat
                  else ""),
    }
    from workbench.export.atomic import staged_dir, write_text_atomic
    with staged_dir(out) as stage:  # all three files appear together, or none (interrupted)
        save_checkpoint(result.model, stage / checkpoint.name, metadata={"recovery": report},
                        structure=structure, dtype=torch.float32)
        write_text_atomic(stage / export_plan.name, rest.to_json())
        write_text_atomic(stage / report_file.name, json.dumps(report, indent=2) + "\n")
    return RecoveryResult(checkpoint, export_plan, report)


class _JobHooks(FitHooks):
    """Recovery inside an engine job: one training step at a time holds the run lock (so a
    slider's evaluation gets in between two steps), progress is reported per step, and a
    cancelled job stops at the next step by raising Cancelled (so nothing half-trained is
    saved or cached)."""

    def __init__(self, job, total: int, lock, priority: int) -> None:
        self.job, self.total, self.lock, self.priority = job, total, lock, priority

    def after_step(self, step: int) -> None:
        self.job.progress(step, self.total)
        self.lock.release()
        self.lock.acquire(self.priority)

    def should_stop(self) -> bool:
        self.job.check()
        return False


def submit_recovery(plan: CompressionPlan, *, teacher: torch.nn.Module | None = None,
                    config: RecoverConfig | None = None,
                    progressive: ProgressiveConfig | None = None, qat: bool = False,
                    manifests: list[Path] | None = None, out_dir: Path | None = None,
                    evaluate_sets: bool = True,
                    on_step: Callable[[dict], None] | None = None,
                    on_done: Callable[[Any], None] | None = None,
                    on_error: Callable[[BaseException], None] | None = None,
                    on_progress: Callable[[int, int], None] | None = None, queue=None):
    """`recover_plan` as a cancellable job of the engine's queue (default: the app's JOBS).

    `on_step(entry)` gets every training step's losses (a live plot); `on_progress(step,
    steps)`; `on_done(RecoveryResult)`, or None when cancelled. Returns the Job (job.cancel())."""
    cfg = config or DEFAULT_CONFIG

    def run(job) -> RecoveryResult:
        # the run lock only around model runs (recover_plan's run_lock), released between
        # two training steps (_JobHooks): corpus building and features leave it free
        return recover_plan(plan, teacher, out_dir=out_dir, config=cfg, manifests=manifests,
                            progress=False, evaluate_sets=evaluate_sets, log=on_step,
                            qat=qat, progressive=progressive,
                            hooks=_JobHooks(job, cfg.steps, RUN_LOCK, BACKGROUND),
                            run_lock=lambda: RUN_LOCK.hold(BACKGROUND))

    return (queue or JOBS).submit(run, name="recovery", priority=BACKGROUND, on_done=on_done,
                                  on_error=on_error, on_progress=on_progress)
