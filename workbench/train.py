"""CTC training: AdamW with linear warm-up and cosine decay, optional SpecAugment, progress bars,
seeded, resumable. Items can be log-mel features (train the whole model) or hidden states cached at
the input of block k (train blocks[k:] and the head only; the frozen part runs once, not every step).

Shapes: features (80, T) per item; hidden (T', D) per item; labels are character ids (workbench.VOCAB).
"""
from __future__ import annotations

import math
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from tqdm import tqdm

from workbench.data.augment import AugmentConfig
from workbench.data.augment import spec_augment as spec_augment_features
from workbench.evaluate import batches as length_batches
from workbench.features import collate_features
from workbench.models.base import CTCModel


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 1000
    lr: float = 1e-3
    warmup: int = 100
    weight_decay: float = 0.01
    max_batch_frames: int = 20_000     # padded frames (of the item's own time axis) per batch
    grad_clip: float = 1.0
    spec_augment: bool = True          # only for feature items: 2 freq masks (F=15), 2 time masks (T=40)
    seed: int = 0
    checkpoint_every: int = 200        # steps between resumable state files (0 = never)
    max_minutes: float | None = None   # stop early when the wall-clock budget is spent


@dataclass(frozen=True)
class Item:
    """One training example: x is (80, T) features (time_last) or (T', D) hidden states;
    labels (L,) int64. The layout is explicit: a shape cannot tell (80, 384) apart."""

    x: torch.Tensor
    labels: torch.Tensor
    time_last: bool = True

    @property
    def frames(self) -> int:
        return self.x.shape[-1] if self.time_last else self.x.shape[0]


def make_batches(items: Sequence[Item], max_frames: int, rng: random.Random) -> list[list[int]]:
    """Length-bucketed batches (shuffled within and across buckets)."""
    order = sorted(range(len(items)), key=lambda i: items[i].frames + rng.random())
    batches, cur, cur_max = [], [], 0
    for i in order:
        n = items[i].frames
        if cur and max(cur_max, n) * (len(cur) + 1) > max_frames:
            batches.append(cur)
            cur, cur_max = [], 0
        cur.append(i)
        cur_max = max(cur_max, n)
    if cur:
        batches.append(cur)
    rng.shuffle(batches)
    return batches


#: SpecAugment of training (Park et al. 2019, LD policy scaled down): 2 frequency masks of up to
#: 15 mel channels, 2 time masks of up to 40 frames and at most a fifth of the utterance.
SPEC_AUGMENT = AugmentConfig(freq_mask_param=15, n_freq_masks=2, time_mask_param=40,
                             time_mask_max_share=0.2, n_time_masks=2)


def spec_augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """SPEC_AUGMENT on (n_mels, T) features: workbench.data.augment.spec_augment (masked values
    are the utterance's mean; torch's global RNG is left as it was)."""
    return spec_augment_features(x, SPEC_AUGMENT, gen)


def collate(items: list[Item], feature_mode: bool) -> tuple[torch.Tensor, ...]:
    lengths = torch.tensor([it.frames for it in items])
    if feature_mode:
        x = torch.zeros(len(items), items[0].x.shape[0], int(lengths.max()))
        for i, it in enumerate(items):
            x[i, :, : it.frames] = it.x
    else:
        x = torch.zeros(len(items), int(lengths.max()), items[0].x.shape[-1])
        for i, it in enumerate(items):
            x[i, : it.frames] = it.x.float()
    labels = torch.cat([it.labels for it in items])
    label_lengths = torch.tensor([len(it.labels) for it in items])
    return x, lengths, labels, label_lengths


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up to cfg.lr over cfg.warmup steps, then cosine decay to 0 at cfg.steps (any
    config with lr / warmup / steps, e.g. RecoverConfig)."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    progress = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


#: (batch item indices, step) -> {"loss": scalar to minimise, other named scalar terms to log}
StepLoss = Callable[[list[int], int], dict[str, torch.Tensor]]


class FitHooks:
    """Optional callbacks of `fit` (all no-ops here; subclass what you need).

    on_start(model): once, before the first step, with the model being trained (e.g. a job
        that evaluates it every k steps);
    after_backward(step): gradients are there (e.g. accumulate Taylor importance);
    on_progress(step, fraction): the optimizer has stepped; how far the run is, 0..1, by
        `budget_progress` (the number the lr schedule follows; a pruning schedule's events);
    after_step(step): right after on_progress (e.g. report progress, yield a lock);
    should_stop(): True ends training after the current step (a cancelled job).
    """

    def on_start(self, model: torch.nn.Module) -> None: ...

    def after_backward(self, step: int) -> None: ...

    def on_progress(self, step: int, fraction: float) -> None: ...

    def after_step(self, step: int) -> None: ...

    def should_stop(self) -> bool:
        return False


def fit(model: torch.nn.Module, params: Sequence[torch.nn.Parameter], n_items: int, cfg: Any,
        step_loss: StepLoss, *, frames: Sequence[int], desc: str = "train",
        state_path: Path | None = None, progress: bool = True,
        log: Callable[[dict], None] | None = None, hooks: FitHooks | None = None) -> list[dict]:
    """The one training loop of the workbench (CTC training, distillation recovery, QAT,
    progressive pruning): AdamW (weight decay on matrices only), linear warm-up + cosine decay
    (`lr_at`), length-bucketed shuffled batches of at most cfg.max_batch_frames padded frames,
    gradient clipping, a wall-clock budget (cfg.max_minutes; the schedule follows whichever of
    steps and minutes is further along), a progress bar, a per-step log, resumable state files.

    `cfg`: any config with steps, lr, warmup, weight_decay, max_batch_frames, grad_clip, seed,
    max_minutes (checkpoint_every optional). `frames[i]`: length of item i (for batching).
    `step_loss(indices, step)` runs the forward pass of one batch. Returns the loss log (one
    dict per step: the terms of step_loss, lr, seconds). `model` is left in eval mode.
    """
    hooks = hooks or FitHooks()
    params = list(params)
    opt = torch.optim.AdamW([{"params": [p for p in params if p.dim() >= 2],
                              "weight_decay": cfg.weight_decay},
                             {"params": [p for p in params if p.dim() < 2],
                              "weight_decay": 0.0}], lr=cfg.lr)
    step, history = 0, []
    if state_path is not None and Path(state_path).exists():
        state = torch.load(state_path, weights_only=True)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        step, history = int(state["step"]), list(state["history"])
    rng = random.Random(cfg.seed * 1000 + step)
    sized = [_Sized(n) for n in frames]
    model.train()
    hooks.on_start(model)
    start = time.perf_counter()
    bar = tqdm(total=cfg.steps, initial=step, desc=desc, disable=not progress, leave=False)
    batches: list[list[int]] = []
    every = getattr(cfg, "checkpoint_every", 0)
    while step < cfg.steps:
        if not batches:
            batches = make_batches(sized, cfg.max_batch_frames, rng)
        terms = step_loss(batches.pop(), step)
        lr = scheduled_lr(step, cfg, time.perf_counter() - start)
        for group in opt.param_groups:
            group["lr"] = lr
        opt.zero_grad(set_to_none=True)
        terms["loss"].backward()
        hooks.after_backward(step)
        torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        opt.step()
        step += 1
        entry = {"step": step, **{k: float(v.detach()) for k, v in terms.items()}, "lr": lr,
                 "seconds": round(time.perf_counter() - start, 3)}
        history.append(entry)
        hooks.on_progress(step, budget_progress(step, cfg, time.perf_counter() - start))
        hooks.after_step(step)
        bar.update(1)
        bar.set_postfix(loss=f"{entry['loss']:.3f}")
        if log is not None:
            log(entry)
        if state_path is not None and every and step % every == 0:
            _save_state(state_path, model, opt, step, history)
        if cfg.max_minutes is not None and (time.perf_counter() - start) / 60 > cfg.max_minutes:
            break
        if hooks.should_stop():
            break
    bar.close()
    model.eval()
    if state_path is not None:
        _save_state(state_path, model, opt, step, history)
    return history


def budget_progress(step: int, cfg: Any, elapsed_s: float) -> float:
    """How far a run is, 0..1: steps done / cfg.steps or, with a wall-clock budget
    (cfg.max_minutes), the further along of that and the share of the budget spent."""
    p = step / cfg.steps
    if cfg.max_minutes is not None:
        p = max(p, elapsed_s / (60 * cfg.max_minutes))
    return min(p, 1.0)


def _schedule_step(step: int, cfg: Any, elapsed_s: float) -> int:
    """The step the lr schedule is at: with a wall-clock budget, the further along of steps and
    time (`budget_progress`), so a run the budget ends early still decays its learning rate
    (and equal-minute comparisons give every recipe a full schedule)."""
    if cfg.max_minutes is None:
        return step
    return max(step, min(cfg.steps, int(budget_progress(0, cfg, elapsed_s) * cfg.steps)))


def scheduled_lr(step: int, cfg: Any, elapsed_s: float) -> float:
    """The lr of optimizer step `step`: the cosine decay follows the budget (`_schedule_step`),
    but the warm-up counts real steps. Under load a timed run takes few steps, and a warm-up
    measured in time ended after 2-3 of them, so the full lr hit a barely warmed-up optimizer
    (bench recover d_windowed at load 6-8: 34 steps in 10 min, WER 0.319 -> 0.356, worse than
    before; the same on a quiet machine: 374 steps, 0.268). Unchanged once step >= warmup."""
    lr = lr_at(_schedule_step(step, cfg, elapsed_s), cfg)
    if step < cfg.warmup:
        lr = min(lr, cfg.lr * (step + 1) / cfg.warmup)
    return lr


@dataclass(frozen=True)
class _Sized:
    frames: int


def train_ctc(model: CTCModel, items: Sequence[Item], cfg: TrainConfig, *, start_block: int | None = None,
              trainable: Callable[[str], bool] | None = None, state_path: Path | None = None,
              progress: bool = True, log: Callable[[dict], None] | None = None) -> list[dict]:
    """Train `model` in place with CTC loss; returns the loss log.

    start_block=None: items are log-mel features, the whole forward runs.
    start_block=k: items are hidden states cached at the input of block k (frozen part skipped).
    trainable(path) selects which parameters train (others are frozen); default: all that run.
    state_path: a resumable state file (model + optimizer + step + RNG); training resumes from it.
    """
    torch.manual_seed(cfg.seed)
    feature_mode = start_block is None
    if any(it.time_last != feature_mode for it in items):
        raise ValueError("items must be features (time_last=True) when start_block is None, "
                         "hidden states (time_last=False) otherwise")
    names = dict(model.named_parameters())
    params = [p for n, p in names.items() if trainable is None or trainable(n)]
    for n, p in names.items():
        p.requires_grad_(trainable is None or trainable(n))
    gen = torch.Generator().manual_seed(cfg.seed * 1000)

    def step_loss(indices: list[int], step: int) -> dict[str, torch.Tensor]:
        batch = [items[i] for i in indices]
        if feature_mode and cfg.spec_augment:
            batch = [Item(spec_augment(it.x, gen), it.labels) for it in batch]
        x, lengths, labels, label_lengths = collate(batch, feature_mode)
        if feature_mode:
            log_probs, out_lengths = model(x, lengths)
        else:
            log_probs, out_lengths = model.forward_from(x, lengths, start_block)
        return {"loss": F.ctc_loss(log_probs.transpose(0, 1), labels, out_lengths,
                                   label_lengths, blank=0, reduction="mean",
                                   zero_infinity=True)}

    history = fit(model, params, len(items), cfg, step_loss, frames=[it.frames for it in items],
                  desc="train", state_path=state_path, progress=progress, log=log)
    for p in model.parameters():
        p.requires_grad_(True)
    return history


def _save_state(path: Path, model, opt, step: int, history: list[dict]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "step": step,
                "history": history}, tmp)
    tmp.replace(path)


@torch.inference_mode()
def cache_hidden(model: CTCModel, features: Sequence[torch.Tensor], stop: int,
                 max_frames: int = 12_000, progress: bool = True, dtype=torch.float16
                 ) -> list[torch.Tensor]:
    """Hidden states at the input of block `stop` for each (80, T) item -> list of (T', D)."""
    model.eval()
    out: list[torch.Tensor] = [torch.empty(0)] * len(features)
    groups = length_batches([f.shape[-1] for f in features], max_frames)
    for idx in tqdm(groups, desc=f"cache block {stop} input", disable=not progress, leave=False):
        x, lens = collate_features([features[i] for i in idx])
        h, hl = model.encode_until(x, lens, stop)
        for j, i in enumerate(idx):
            out[i] = h[j, : hl[j]].to(dtype).clone()
    return out


def config_dict(cfg: TrainConfig) -> dict:
    return asdict(cfg)
