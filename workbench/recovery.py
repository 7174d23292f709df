"""`workbench recover`: compress the demo (or a checkpoint) structurally, then recover accuracy
by distillation from the uncompressed model, and save the result as a checkpoint.

    recover_plan(plan, ...) -> RecoveryResult   (cached by plan + teacher + recipe)

Training data: the demo's corpus (synthetic train sentences, real fine-tune prompts with one
augmented view each), built offline if missing (`workbench data build`); or any NeMo manifests.
The evaluation sets are never trained on. Quantization entries of the plan are written to
`export_plan.json`, for `workbench apply --checkpoint`; with `qat=True` recovery also trains for
them (quantization-aware, straight-through; then a plan without structure is fine too).
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

from workbench.compress.progressive import ProgressiveConfig, progressive_recover
from workbench.compress.recover import RecoverConfig, recover, split_plan
from workbench.plan import CompressionPlan
from workbench.train import FitHooks, Item
from workbench.compress.resolution import resolve
from workbench.compress.techniques import structure_only

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
    """Log-mel + label items: the given manifests, or the demo corpus (built if missing)."""
    from workbench.data import build_all, read_manifest
    from workbench.paths import cache_dir
    from workbench.recipes import _items

    if manifests:
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
    from workbench.evaluate import load_eval_set
    from workbench.paths import REAL_TEST, SYNTH_TEST
    return {name: load_eval_set(m, progress=False)
            for name, m in (("real_test", REAL_TEST), ("synth_test", SYNTH_TEST))}


def _wers(model: torch.nn.Module, sets: dict[str, Any],
          hold: Callable[[], AbstractContextManager] = nullcontext) -> dict[str, float]:
    """Greedy WER per set, each evaluation inside `hold()` (a run lock, or nothing)."""
    from workbench.evaluate import evaluate
    out = {}
    for name, eval_set in sets.items():
        with hold():
            out[name] = round(evaluate(model, eval_set).wer, 4)
    return out


def removes_structure(plan: CompressionPlan, model: torch.nn.Module) -> bool:
    """True when `plan` prunes or factorizes some layer of `model` (recovery has work to do)."""
    return any(not structure_only(c).is_empty() for c in resolve(plan, model).values())


def recover_plan(plan: CompressionPlan, teacher: torch.nn.Module | None = None,
                 out_dir: Path | None = None, config: RecoverConfig | None = None,
                 manifests: list[Path] | None = None, teacher_name: str = "demo",
                 progress: bool = True, evaluate_sets: bool = True,
                 log: Callable[[dict], None] | None = None, qat: bool = False,
                 progressive: ProgressiveConfig | None = None, hooks: FitHooks | None = None,
                 run_lock: Callable[[], AbstractContextManager] | None = None
                 ) -> RecoveryResult:
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
    """
    from workbench.compress import compress
    from workbench.models import load_demo, save_checkpoint
    from workbench.paths import cache_dir

    cfg = config or DEFAULT_CONFIG
    hold = run_lock or nullcontext
    teacher = teacher if teacher is not None else load_demo()
    # The plan's structure (energy settings as given) without its quantization, which is
    # applied at export or trained for with qat: enough for the cache key.
    structure, rest = split_plan(plan, teacher, None)
    if not structure.layers and not (qat and rest.layers):
        from workbench.errors import PlanError
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
            from workbench.errors import PlanError
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
    with hold():   # an engine job's hooks release it between two steps
        if progressive is not None:
            result = progressive_recover(teacher, structure, items, cfg, progressive,
                                         progress=progress, log=log, hooks=hooks)
        else:
            result = recover(student, teacher, items, cfg, progress=progress, log=log,
                             quant=rest if qat else None, hooks=hooks)
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
        "config": asdict(cfg),
        "seconds": {"data": round(t_data, 1), "total": round(time.perf_counter() - start, 1)},
        "machine": f"{torch.get_num_threads()} threads, torch {torch.__version__}",
        "how": ("progressive pruning (cubic schedule, importance re-scored) + " if progressive
                else "") + "layer-wise distillation (block outputs MSE / teacher variance) + KL on CTC "
               "posteriors + 0.2 CTC; front-end frozen (workbench.compress.recover)"
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
    from workbench.engine.jobs import BACKGROUND, JOBS, RUN_LOCK
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
