"""Recipe search for recovery: which learning rate, loss mix, trained parameters and per-block
emphasis recover a compressed model best, searched on the recovery corpus only.

    result = search_recipe(student, teacher, items, RecipeSearchConfig(trials=8, trial_steps=40))
    result.best.recipe.config(360, n_blocks)   # a RecoverConfig for recover / recover_plan
    result.table()                             # one row per trial (JSON-ready)

The recovery items are split by transcript (every view of a sentence on the same side) into a
training part and a validation part of about `val_items` items. Each trial recovers a copy of
the student (workbench.compress.distill) for `trial_steps` optimizer steps — steps, not minutes,
so a trial's result does not depend on the machine's load — with a sampled Recipe, then scores
the recovered model on the validation part:

    val_kd    KL(teacher || student) of the CTC posteriors per valid frame (the objective, by
              default)
    val_wer   greedy CTC WER against the validation items' labels (the tie-break; the
              objective with objective="wer")
    val_hidden  the layer-wise hidden distance (block outputs MSE / teacher variance, mean)

Why KD and not WER by default: short trials leave a heavily pruned model far from usable, where
WER saturates. Measured on the demo (50 % FFN neurons + 2/6 heads, 30-step trials of 4,000-frame
batches, 5 recipes): validation WER 0.995-1.046 for every recipe (all but empty transcripts),
while KD separated them (1.73-2.55) and ranked the default recipe first. The recipe WER picked
(only changed layers, lr 6.5e-4, more hidden and CTC weight, late blocks weighted up) then did
worse on the held-out real prompts after 100 steps than the default (greedy WER 0.938 vs 0.926,
both from 1.834; measured once, after both runs). WER becomes the better judge once trials are
long enough to bring it well below 1 (objective="wer").

Both val_kd and val_hidden are the same functions for every trial (fixed weights), so trials
with different loss mixes compare. The held-out sets (real_test, synth_test) are never read:
nothing here loads an eval manifest, and search_recipe_for_plan refuses them as training data.

Trial 0 is always the default recipe (the one `workbench recover` uses), so the best recipe is
never worse than the default on the validation split. Later trials come from Optuna's TPE
sampler (seeded; trials asked and told one at a time, so a seed gives the same trials). Every
trial sees the same batches in the same order (one training seed): the comparison is paired.
The teacher's outputs are computed once per item, before trial 0, and shared by all trials
(the Distiller cache of workbench.compress.distill), so every trial runs the student only.
"""
from __future__ import annotations

import copy
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from workbench.compress import compress
from workbench.compress.distill import (TRAIN_CHOICES, Distiller, RecoverConfig,
                                        check_recovery_inputs, frozen_teacher, recover,
                                        trainable_params)
from workbench.compress.resolution import resolve
from workbench.compress.techniques import structure_only
from workbench.compress.trainable import first_trained_block
from workbench.errors import PlanError, WorkbenchError
from workbench.evaluate import EvalSet, evaluate
from workbench.models.base import VOCAB
from workbench.plan import CompressionPlan
from workbench.recovery import DEFAULT_CONFIG, recovery_items
from workbench.train import Item

#: Warm-up share of the default recipe (30 of 360 steps, workbench.recovery.DEFAULT_CONFIG),
#: kept for every step count so a 40-step trial is not all warm-up.
WARMUP_SHARE = 30 / 360
#: The sampled ranges (Optuna distributions). lr: log-uniform around the default 5e-4;
#: hidden_share: the hidden term's share of hidden + kd (weights 2 * share, 2 * (1 - share), so
#: the default 1 / 1 is 0.5); ctc_weight 0..1 (default 0.2); depth_tilt: per-block weights
#: 1 + tilt * (2k / (n - 1) - 1), i.e. late blocks get more of the hidden loss for tilt > 0.
LR_RANGE = (1e-4, 3e-3)
CTC_RANGE = (0.0, 1.0)
OBJECTIVES = ("kd", "wer")


@dataclass(frozen=True)
class Recipe:
    lr: float = 5e-4
    hidden_share: float = 0.5
    ctc_weight: float = 0.2
    train: str = "all"
    depth_tilt: float = 0.0

    def block_weights(self, n_blocks: int) -> tuple[float, ...] | None:
        if self.depth_tilt == 0 or n_blocks < 2:
            return None
        return tuple(round(1 + self.depth_tilt * (2 * k / (n_blocks - 1) - 1), 6)
                     for k in range(n_blocks))

    def config(self, steps: int, n_blocks: int, base: RecoverConfig | None = None
               ) -> RecoverConfig:
        """The RecoverConfig of this recipe for `steps` steps; the rest (batch size, weight
        decay, clipping, seed) from `base` (default: workbench.recovery.DEFAULT_CONFIG), with
        no wall-clock budget."""
        return replace(base or DEFAULT_CONFIG, steps=steps, max_minutes=None,
                       warmup=max(1, round(steps * WARMUP_SHARE)), lr=self.lr,
                       hidden_weight=round(2 * self.hidden_share, 6),
                       kd_weight=round(2 * (1 - self.hidden_share), 6),
                       ctc_weight=self.ctc_weight, train=self.train,
                       block_weights=self.block_weights(n_blocks))


@dataclass(frozen=True)
class RecipeSearchConfig:
    trials: int = 8
    trial_steps: int = 40
    val_items: int = 64
    objective: str = "kd"
    seed: int = 0
    base: RecoverConfig | None = None   # batch size, weight decay, ... (default: DEFAULT_CONFIG)

    def __post_init__(self) -> None:
        for name, low in (("trials", 1), ("trial_steps", 1), ("val_items", 1), ("seed", 0)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                raise WorkbenchError(f"RecipeSearchConfig.{name}: an integer >= {low}, got "
                                     f"{v!r:.30}.")
        if self.objective not in OBJECTIVES:
            raise WorkbenchError(f"RecipeSearchConfig.objective: one of {', '.join(OBJECTIVES)}, "
                                 f"got {self.objective!r:.30}.")
        if self.base is not None and not isinstance(self.base, RecoverConfig):
            raise WorkbenchError(f"RecipeSearchConfig.base: a RecoverConfig or None, got "
                                 f"{type(self.base).__name__}.")


@dataclass
class RecipeTrial:
    number: int
    recipe: Recipe
    scores: dict[str, float | None] = field(default_factory=dict)  # val_wer, val_kd, val_hidden
    steps: int = 0
    seconds: float = 0.0          # wall clock of the training (load-dependent; not the budget)
    trained_params: int = 0
    start_block: int = 0
    final_loss: float | None = None
    error: str | None = None

    def key(self, objective: str) -> tuple[float, float, int]:
        """Sort key: the objective, then the other score, then the trial number."""
        if self.error is not None or not self.scores:
            return (math.inf, math.inf, self.number)
        a, b = ("val_kd", "val_wer") if objective == "kd" else ("val_wer", "val_kd")

        def finite(v: float | None) -> float:
            return v if v is not None and math.isfinite(v) else math.inf
        return (finite(self.scores[a]), finite(self.scores[b]), self.number)

    def row(self) -> dict[str, Any]:
        return {"number": self.number, "recipe": asdict(self.recipe), **self.scores,
                "steps": self.steps, "seconds": round(self.seconds, 2),
                "seconds_per_step": round(self.seconds / self.steps, 3) if self.steps else None,
                "trained_params": self.trained_params, "start_block": self.start_block,
                "final_train_loss": self.final_loss, "error": self.error}


@dataclass
class RecipeSearchResult:
    config: RecipeSearchConfig
    trials: list[RecipeTrial]
    train_items: int
    val_items: int
    val_words: int
    teacher_seconds: float = 0.0     # computing every teacher output once, before the trials
    teacher_cache_bytes: int = 0

    @property
    def best(self) -> RecipeTrial:
        return min(self.trials, key=lambda t: t.key(self.config.objective))

    @property
    def default(self) -> RecipeTrial:
        return self.trials[0]

    def table(self) -> dict[str, Any]:
        cfg = self.config
        return {"config": {**asdict(cfg), "base": asdict(cfg.base) if cfg.base else None},
                "objective": f"val_{cfg.objective}", "best_trial": self.best.number,
                "best_recipe": asdict(self.best.recipe), "default_trial": 0,
                "train_items": self.train_items, "val_items": self.val_items,
                "val_words": self.val_words, "teacher_seconds": round(self.teacher_seconds, 2),
                "teacher_cache_mb": round(self.teacher_cache_bytes / 1e6, 1),
                "trials": [t.row() for t in self.trials],
                "numbers": ("each trial: recovery for trial_steps optimizer steps on the training "
                            "part of the recovery corpus, scored on its validation part (split "
                            "by transcript): greedy CTC WER vs labels, KL(teacher||student) of "
                            "CTC posteriors and hidden distance per valid frame; seconds are "
                            "wall clock on a shared machine (informative only); the held-out "
                            "sets were not read")}


def split_items(items: Sequence[Item], val_items: int, seed: int
                ) -> tuple[list[Item], list[Item]]:
    """(train, validation): whole transcripts (all views of a sentence) go to one side; the
    validation side gets shuffled transcripts until it holds >= val_items items."""
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, it in enumerate(items):
        groups.setdefault(tuple(it.labels.tolist()), []).append(i)
    keys = sorted(groups)
    random.Random(seed).shuffle(keys)
    val: list[int] = []
    for k in keys:
        if len(val) >= val_items:
            break
        val += groups[k]
    chosen = set(val)
    train = [it for i, it in enumerate(items) if i not in chosen]
    if not train or len(keys) < 2:
        raise WorkbenchError(f"recipe search: {len(items)} recovery items with {len(keys)} "
                             f"distinct transcripts cannot give both a training and a "
                             f"validation part of {val_items} items; give more data or a "
                             f"smaller val_items.")
    return train, [items[i] for i in sorted(chosen)]


def _sample(trial, has_labels: bool) -> Recipe:
    return Recipe(lr=trial.suggest_float("lr", *LR_RANGE, log=True),
                  hidden_share=trial.suggest_float("hidden_share", 0.0, 1.0),
                  ctc_weight=trial.suggest_float("ctc_weight", *CTC_RANGE) if has_labels else 0.0,
                  train=trial.suggest_categorical("train", list(TRAIN_CHOICES)),
                  depth_tilt=trial.suggest_float("depth_tilt", -1.0, 1.0))


def _default_params(recipe: Recipe, has_labels: bool) -> dict[str, Any]:
    params = asdict(recipe)
    if not has_labels:
        params.pop("ctc_weight")
    return params


@torch.no_grad()
def _val_scores(model: torch.nn.Module, val: Distiller, val_set) -> dict[str, float | None]:
    model.eval()
    order = sorted(range(len(val.items)), key=lambda i: val.items[i].frames)
    hidden = kd = 0.0
    frames = 0
    for j in range(0, len(order), 16):           # length-sorted chunks: little padding
        idx = order[j: j + 16]
        n = sum(val.items[i].frames for i in idx)
        terms = val.loss(model, idx)
        hidden += float(terms["hidden"]) * n
        kd += float(terms["kd"]) * n
        frames += n
    out = {"val_hidden": round(hidden / frames, 6), "val_kd": round(kd / frames, 6)}
    out["val_wer"] = round(evaluate(model, val_set).wer, 6) if val_set is not None else None
    return out


def _val_eval_set(val: Sequence[Item]):
    """The validation items as an EvalSet (texts decoded from the labels), or None when no item
    has words (WER undefined)."""
    texts = [" ".join("".join(VOCAB[i] for i in it.labels.tolist()).split()) for it in val]
    if not all(texts):
        return None
    return EvalSet("recipe-validation", Path("<recovery corpus, validation split>"),
                   tuple(f"val{i}" for i in range(len(val))), tuple(texts),
                   tuple(it.x for it in val))


def search_recipe(student: torch.nn.Module, teacher: torch.nn.Module, items: Sequence[Item],
                  config: RecipeSearchConfig | None = None,
                  on_trial: Callable[[RecipeTrial], None] | None = None,
                  cancel: Callable[[], bool] = lambda: False) -> RecipeSearchResult:
    """Search the recovery recipe of `student` (a compressed `teacher`) on `items` (the
    recovery corpus: log-mel + label Items); see the module docstring. Neither model is
    modified. `on_trial(trial)` is called after each trial (a progress bar); `cancel()` True
    stops after the current trial (the result holds the trials done)."""
    import optuna                       # imported when a search runs (heavy)

    cfg = config or RecipeSearchConfig()
    if not isinstance(cfg, RecipeSearchConfig):
        raise WorkbenchError(f"search_recipe(config=...): a RecipeSearchConfig, got "
                             f"{type(cfg).__name__}.")
    check_recovery_inputs(student, teacher, items, cfg.base)
    train, val = split_items(items, cfg.val_items, cfg.seed)
    has_labels = any(it.labels.numel() for it in train)
    val_set = _val_eval_set(val)
    objective = cfg.objective
    if objective == "wer" and val_set is None:
        raise WorkbenchError("recipe search: some validation items have no words, so WER is "
                             "undefined; use objective='kd' (distillation distance).")
    n_blocks = len(teacher.blocks)
    reference = RecoverConfig(ctc_weight=0.0)        # fixed scoring weights for every trial
    frozen = frozen_teacher(teacher)
    shared = Distiller(frozen, train, reference)     # teacher outputs, shared by all trials
    val_distiller = Distiller(frozen, val, reference)
    start = time.perf_counter()
    max_frames = (cfg.base or DEFAULT_CONFIG).max_batch_frames
    for d in (shared, val_distiller):   # once, before trial 0, so trials time alike
        for chunk in _chunks([it.frames for it in d.items], max_frames):
            d.warm(chunk)
    teacher_seconds = time.perf_counter() - start
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sampler = optuna.samplers.TPESampler(seed=cfg.seed,
                                         n_startup_trials=max(2, min(10, cfg.trials // 2)))
    study = optuna.create_study(direction="minimize", sampler=sampler)
    study.enqueue_trial(_default_params(Recipe(), has_labels))
    trials: list[RecipeTrial] = []
    selections: dict[str, tuple[int, int]] = {}
    for number in range(cfg.trials):
        if cancel():
            break
        ot = study.ask()
        rt = RecipeTrial(number, _sample(ot, has_labels))
        try:
            rc = rt.recipe.config(cfg.trial_steps, n_blocks, cfg.base)
            start = time.perf_counter()
            result = recover(student, teacher, train, rc, progress=False, distiller=shared)
            rt.seconds = time.perf_counter() - start
            rt.steps = len(result.history)
            rt.final_loss = round(result.history[-1]["loss"], 6) if result.history else None
            if rc.train not in selections:
                selections[rc.train] = _selection(student, teacher, rc.train)
            rt.trained_params, rt.start_block = selections[rc.train]
            rt.scores = _val_scores(result.model, val_distiller, val_set)
            value = rt.key(objective)[0]
            if math.isfinite(value):
                study.tell(ot, value)
            else:
                study.tell(ot, state=optuna.trial.TrialState.FAIL)
        except WorkbenchError as err:         # a recipe this model cannot take: recorded
            rt.error = str(err)
            study.tell(ot, state=optuna.trial.TrialState.FAIL)
        trials.append(rt)
        if on_trial is not None:
            on_trial(rt)
    if not trials:
        raise WorkbenchError("recipe search: cancelled before the first trial finished.")
    words = sum(len(t.split()) for t in val_set.texts) if val_set is not None else 0
    return RecipeSearchResult(cfg, trials, len(train), len(val), words, teacher_seconds,
                              shared.cache_bytes + val_distiller.cache_bytes)


def _chunks(frames: Sequence[int], max_frames: int) -> list[list[int]]:
    """Item indices in length order, grouped so a padded chunk has <= max_frames frames."""
    out: list[list[int]] = [[]]
    longest = 0
    for i in sorted(range(len(frames)), key=frames.__getitem__):
        if out[-1] and max(longest, frames[i]) * (len(out[-1]) + 1) > max_frames:
            out.append([])
            longest = 0
        out[-1].append(i)
        longest = max(longest, frames[i])
    return out


def _selection(student: torch.nn.Module, teacher: torch.nn.Module, train: str
               ) -> tuple[int, int]:
    """(parameter elements that train, first block that runs) under `train`, as recover sets
    them (on a copy: the student's requires_grad flags are not touched)."""
    probe = copy.deepcopy(student)
    n = sum(p.numel() for p in trainable_params(probe, teacher, train))
    return n, 0 if train == "all" else first_trained_block(probe)


def check_training_manifests(manifests: Sequence[Path] | None) -> None:
    """Refuse a manifest with any utterance of a held-out set as recipe-search data (they score
    the result, never choose it): workbench.data.held_out's rule, one line naming --manifest."""
    from workbench.data.held_out import refuse_held_out
    refuse_held_out(manifests, option="--manifest",
                    use="recipe-search data (training / calibration data only)")


def search_recipe_for_plan(plan, teacher: torch.nn.Module | None = None, *,
                           manifests: Sequence[Path] | None = None,
                           items: Sequence[Item] | None = None,
                           config: RecipeSearchConfig | None = None,
                           on_trial: Callable[[RecipeTrial], None] | None = None,
                           progress: bool = True) -> RecipeSearchResult:
    """search_recipe for the structure of `plan` on `teacher` (default: the demo), as
    workbench.recovery.recover_plan would recover it: the student is the plan's pruning /
    low rank without its quantization; the items are `items`, or the recovery corpus of
    `manifests` (default: the demo corpus, built if missing)."""

    check_training_manifests(manifests)
    if teacher is None:
        from workbench.models import load_demo  # looked up per call: tests monkeypatch it
        teacher = load_demo()
    shapes = {path: structure_only(c) for path, c in resolve(plan, teacher).items()}
    structure = {p: c for p, c in shapes.items() if not c.is_empty()}
    if not structure:
        raise PlanError("recipe search: the plan removes no structure (no pruning, no low rank); "
                        "there is nothing to recover.")
    student = compress(teacher, CompressionPlan(layers=structure))
    if items is None:
        seed = (config or RecipeSearchConfig()).seed
        items = recovery_items(list(manifests) if manifests else None, seed=seed,
                               progress=progress)
    return search_recipe(student, teacher, items, config, on_trial)
