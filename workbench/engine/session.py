"""The interactive engine: sub-second re-evaluation of a compression plan while a slider moves.

How it is fast (DESIGN.md section 4):
- the eval set's log-mel features are batched once (fixed batches, sorted by length);
- hidden states at the input of every block are cached, keyed by the plan entries of everything
  before that block; a new plan restarts from the first block whose entries differ from a cached
  prefix (usually the block the user just touched), not from the audio;
- a quick estimate runs on a fixed random subset first (16 utterances): the subset's paired WER
  change vs the baseline is added to the full baseline WER, with its standard error; then the
  full set follows, which is that subset plus the rest, so the subset's work is reused;
- batches are length-sorted with little padding (`evaluate.batches`), and low-rank settings reuse
  cached SVDs (`compress.lowrank.svd`);
- `submit` runs quick-then-full as one job of the engine's queue (JOBS, INTERACTIVE priority);
  a newer submit cancels stale work between blocks and batches (a stale job still queued never
  starts), and a stale result is never delivered.
Size and latency need no model run: they are arithmetic over cached per-layer tables.

Numbers: the engine and a from-scratch run use the same fixed batches, so its WER equals the WER
of `evaluate(compress(model, plan), eval_set)` up to batch composition (checked in tests).
"""
from __future__ import annotations

import copy
import hashlib
import json
import math
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Literal
from collections.abc import Callable

import torch

from workbench.decode import greedy_decode
from workbench.evaluate import EvalSet, batches, check_eval_set, score
from workbench.features import collate_features
from workbench.models.base import CTCModel, role_of
from workbench.models.layers import lengths_to_pad_mask
from workbench.compress.resolution import resolve
from workbench.engine.jobs import (INTERACTIVE, JOBS, RUN_LOCK,  # noqa: F401 (re-exported)
                                   Cancelled, Job, JobQueue)
from workbench.checks import check_choice, check_int, check_model, check_plan
from workbench.compress import compress, compress_module, lowrank, under
from workbench.compress.apply import needs_activation_calibration, needs_gradients
from workbench.errors import ArgumentError
from workbench.plan import CompressionPlan


@dataclass(frozen=True)
class WerEstimate:
    """WER / CER of a plan. kind='quick': subset estimate with standard error; 'full': exact."""

    kind: Literal["quick", "full"]
    wer: float
    cer: float
    wer_delta: float            # vs the baseline model on the same utterances
    cer_delta: float
    stderr: float               # standard error of `wer` (0 for the full set)
    utterances: int
    compute_ms: float
    restart_block: int          # -1: from the features; k: from the input of block k; n: head only
    plan_key: str
    hypotheses: tuple[str, ...]  # per utterance of the evaluated set, in eval-set order
    source: str = "measured: greedy CTC on the eval set (jiwer)"


def plan_key(plan) -> str:
    return hashlib.sha1(plan.to_json().encode()).hexdigest()[:16]


class _Batches:
    """Fixed length-sorted batches of a set of utterance indices, with stem outputs cached."""

    def __init__(self, features, indices: list[int], max_frames: int) -> None:
        lens = [features[i].shape[-1] for i in indices]
        self.groups = [[indices[j] for j in g] for g in batches(lens, max_frames)]
        self.inputs = [collate_features([features[i] for i in g]) for g in self.groups]
        self.order = [i for g in self.groups for i in g]


class BackgroundEval:
    """submit / wait / cancel for a session (Session, WhisperSession) whose
    `evaluate(plan, kind, cancel=)` raises Cancelled when `cancel()` turns True. The work runs as
    a job of the engine's queue (`JOBS`, INTERACTIVE priority, so it goes before any queued
    user or background job and gets the run lock between two cells of a sweep). The session's
    __init__ sets `_lock` (which also guards its results) and `_generation` = 0."""

    _lock: threading.RLock
    _generation: int
    _job: Job | None = None          # the newest request's job
    jobs: JobQueue = JOBS            # the queue requests go to (a test may give its own)

    def submit(self, plan, on_result: Callable[[WerEstimate], None],
               on_error: Callable[[BaseException], None] | None = None,
               kinds: tuple[str, ...] = ("quick", "full")) -> int:
        """Evaluate quick then full as one INTERACTIVE job; a newer submit cancels this one.

        A stale job still queued never starts; a running one stops between blocks and batches.
        Callbacks run on the queue's worker thread; a result (or error) is delivered only while
        its request is the newest. Returns the request's generation number.
        """
        name = f"{type(self).__name__}.submit"
        plan = check_plan(plan, name)
        if not callable(on_result) or (on_error is not None and not callable(on_error)):
            raise ArgumentError(f"{name}(on_result=..., on_error=...): callbacks must be "
                                "callables taking one argument.")
        if isinstance(kinds, str) or not kinds:
            raise ArgumentError(f"{name}(kinds={kinds!r:.40}): a non-empty tuple of "
                                f"'quick' / 'full'.")
        for kind in kinds:
            check_choice(kind, ("quick", "full"), name, "kinds")

        def work(job: Job) -> None:
            stale = lambda: job.cancelled or gen != self._generation  # noqa: E731
            # One model run at a time (two torch runs on 2 cores are ~10x slower); a slider's
            # evaluation goes before any queued background run (engine.jobs).
            with RUN_LOCK.hold(INTERACTIVE):
                for kind in kinds:
                    if stale():
                        return
                    try:
                        result = self.evaluate(plan, kind, cancel=stale)
                    except Cancelled:
                        return
                    except BaseException as err:  # shown by the UI, never swallowed
                        if on_error is not None and not stale():
                            on_error(err)
                        return
                    if not stale():
                        on_result(result)

        with self._lock:   # generation, cancel and the new job together: no request in between
            self._generation += 1
            gen = self._generation
            if self._job is not None:
                self._job.cancel()
            self._job = self.jobs.submit(work, name=f"{type(self).__name__} evaluation {gen}",
                                         priority=INTERACTIVE)
        return gen

    def wait(self, timeout: float | None = None) -> None:
        """Block until the latest submitted work is done (for tests and scripts)."""
        job = self._job
        if job is not None:
            job.wait(timeout)

    def cancel(self) -> None:
        """Drop the newest request: its job stops (or never starts), its callbacks never run."""
        with self._lock:
            self._generation += 1
            if self._job is not None:
                self._job.cancel()

    def _remember(self, key: tuple, result: WerEstimate) -> WerEstimate:
        """Keep `result` in the per-plan result cache (the 512 most recent plans) and return it."""
        with self._lock:
            self._results[key] = result
            while len(self._results) > 512:
                self._results.popitem(last=False)
        return result



class Session(BackgroundEval):
    """Holds a baseline model and an eval set; evaluates plans fast. Thread-safe via one lock."""

    def __init__(self, model: CTCModel, eval_set: EvalSet, *, quick_utterances: int = 16,
                 max_frames: int = 12_000, cache_entries: int = 48, calib=None, seed: int = 0,
                 warm_svd: bool = True) -> None:
        check_model(model, "Session")
        check_eval_set(eval_set, "Session")
        check_int(quick_utterances, "Session", "quick_utterances", low=1)
        check_int(max_frames, "Session", "max_frames", low=100)
        check_int(cache_entries, "Session", "cache_entries", low=1)
        if not hasattr(model, "blocks"):
            raise ArgumentError(f"Session(model=...): a {type(model).__name__} has no 'blocks'; "
                                f"the session needs a workbench CTC model (load_demo(), "
                                f"conformer_ctc(), load_checkpoint()).")
        self.baseline = copy.deepcopy(model).eval()
        # what `rebased` needs to build the same session on another model
        self._settings = dict(quick_utterances=quick_utterances, max_frames=max_frames,
                              cache_entries=cache_entries, calib=calib, seed=seed,
                              warm_svd=warm_svd)
        if warm_svd:  # ~1 s once on the demo, so the first move of any rank slider needs no SVD
            linears = [m for m in self.baseline.blocks.modules() if isinstance(m, torch.nn.Linear)]
            if len(linears) <= lowrank.SVD_CACHE_ENTRIES // 2:  # big models: SVD on demand
                for module in linears:
                    lowrank.svd(module.weight)
        self.eval_set = eval_set
        self.calib = calib
        self.n_blocks = len(self.baseline.blocks)
        n = len(eval_set)
        rng = torch.Generator().manual_seed(seed)
        quick = sorted(torch.randperm(n, generator=rng)[: min(quick_utterances, n)].tolist())
        rest = sorted(set(range(n)) - set(quick))
        # The full set is evaluated as the quick part plus the rest: the quick part's hidden
        # states (cached by the quick run just before) are reused, not recomputed.
        self._parts = {"quick": _Batches(eval_set.features, quick, max_frames),
                       "rest": _Batches(eval_set.features, rest, max_frames)}
        self._kinds = {"quick": ("quick",), "full": ("quick", "rest")}
        self._lock = threading.RLock()
        self._hidden: OrderedDict[tuple, list] = OrderedDict()   # (set, block, prefix sig) -> [(h, lens)]
        self._models: OrderedDict[str, CTCModel] = OrderedDict()
        self._blocks: OrderedDict[tuple, torch.nn.Module] = OrderedDict()  # (block, entries) -> module
        self._results: OrderedDict[tuple, WerEstimate] = OrderedDict()
        self._cache_entries = cache_entries
        self._generation = 0
        self._empty_plan = CompressionPlan()
        self._empty_sigs = self._signatures(self._empty_plan)
        self._baseline_hyps = {k: self._run_kind(self._empty_plan, k, None)[0]
                               for k in self._kinds}
        self.baseline_full = self.evaluate(self._empty_plan, "full")

    # ---- plan structure -------------------------------------------------------------------
    def _block_of(self, path: str) -> int:
        """-1 for the stem, i for blocks.i.*, n_blocks for the head / final norm."""
        if path.startswith("blocks."):
            return int(path.split(".")[1])
        return self.n_blocks if self._is_head(path) else -1

    def _is_head(self, path: str) -> bool:
        return role_of(self.baseline, path) in ("head", "norm") and not path.startswith("blocks.")

    def _signatures(self, plan) -> list[str]:
        """Signature of the plan entries that touch each stage: [stem, block 0..n-1, head]."""
        parts: list[dict] = [{} for _ in range(self.n_blocks + 2)]
        for path, cfg in resolve(plan, self.baseline).items():
            dump = cfg.model_dump(mode="json") if hasattr(cfg, "model_dump") else cfg
            parts[self._block_of(path) + 1][path] = dump
        return [hashlib.sha1(json.dumps(p, sort_keys=True).encode()).hexdigest()[:12] for p in parts]

    def compressed_model(self, plan) -> CTCModel:
        """The baseline with `plan` applied, assembled block by block from a cache.

        A slider move changes one block: only that block is compressed again (compress_module on a
        copy of it); untouched blocks are the baseline's own modules, shared, never modified.
        Plans touching the stem or head, or needing calibration (Taylor importance, activation
        quantization), take the whole-model path `compress(baseline, plan, calib)`.
        """
        key = plan_key(plan)
        with self._lock:
            if key in self._models:
                self._models.move_to_end(key)
                return self._models[key]

        resolved = {p: c for p, c in resolve(plan, self.baseline).items() if not c.is_empty()}
        whole = (needs_gradients(resolved) or needs_activation_calibration(resolved)
                 or any(self._block_of(p) in (-1, self.n_blocks) for p in resolved))
        if whole:
            model = compress(self.baseline, plan, calib=self.calib).eval()
        else:
            blocks = []
            for i, block in enumerate(self.baseline.blocks):
                entries = under(resolved, f"blocks.{i}")
                if not entries:
                    blocks.append(block)
                    continue
                sig = (i, json.dumps({p: c.model_dump(mode="json") for p, c in entries.items()},
                                     sort_keys=True))
                with self._lock:
                    cached = self._blocks.get(sig)
                if cached is None:
                    cached = compress_module(block, entries, model=self.baseline,
                                             prefix=f"blocks.{i}").model.eval()
                    with self._lock:
                        self._blocks[sig] = cached
                        while len(self._blocks) > 256:
                            self._blocks.popitem(last=False)
                blocks.append(cached)
            # A shallow copy with its own module table: the baseline's table is not touched.
            model = copy.copy(self.baseline)
            model._modules = dict(self.baseline._modules)
            model.blocks = torch.nn.ModuleList(blocks)
        with self._lock:
            self._models[key] = model
            while len(self._models) > 6:
                self._models.popitem(last=False)
        return model

    # ---- evaluation ---------------------------------------------------------------------
    def _cache_put(self, key: tuple, value: list) -> None:
        self._hidden[key] = value
        self._hidden.move_to_end(key)
        while len(self._hidden) > self._cache_entries:
            self._hidden.popitem(last=False)

    def _order(self, kind: str) -> list[int]:
        return [i for part in self._kinds[kind] for i in self._parts[part].order]

    def _run_kind(self, plan, kind: str, cancel: Callable[[], bool] | None
                  ) -> tuple[list[str], int]:
        """Hypotheses in `_order(kind)` and the earliest block any part restarted from."""
        sigs = self._signatures(plan)
        hyps: list[str] = []
        restarts = []
        for part in self._kinds[kind]:
            part_hyps, restart = self._run(plan, sigs, part, cancel)
            hyps += part_hyps
            restarts.append(restart)
        return hyps, min(restarts)

    @torch.inference_mode()
    def _run(self, plan, sigs: list[str], kind: str, cancel: Callable[[], bool] | None
             ) -> tuple[list[str], int]:
        """Hypotheses of one part (in its batch order) and the block the run restarted from
        (-1: from the features; k: from the input of block k; n_blocks: head only)."""
        sets = self._parts[kind]
        # Find the deepest cached block input whose whole prefix matches this plan.
        start, states = -1, None
        for k in range(self.n_blocks, -1, -1):
            key = (kind, k, tuple(sigs[: k + 1]))
            with self._lock:
                if key in self._hidden:
                    start, states = k, self._hidden[key]
                    self._hidden.move_to_end(key)
                    break
        model = self.compressed_model(plan) if sigs != self._empty_sigs else self.baseline
        if states is None:
            states = []
            for x, lens in sets.inputs:
                check_cancel(cancel)
                states.append(model.stem(x, lens))
            start, restart = 0, -1
            with self._lock:
                self._cache_put((kind, 0, tuple(sigs[:1])), states)
        else:
            restart = start
        for k in range(start, self.n_blocks):
            block = model.blocks[k]
            new = []
            for h, lens in states:
                check_cancel(cancel)
                new.append((block(h, lengths_to_pad_mask(lens, h.shape[1])), lens))
            states = new
            with self._lock:
                self._cache_put((kind, k + 1, tuple(sigs[: k + 2])), states)
        hyps: list[str] = []
        for h, lens in states:
            check_cancel(cancel)
            hyps += greedy_decode(model.head(h, lens).log_softmax(-1), lens)
        return hyps, restart

    def evaluate(self, plan, kind: Literal["quick", "full"] = "full",
                 cancel: Callable[[], bool] | None = None) -> WerEstimate:
        """WER / CER of `plan` on the quick subset (estimate + stderr) or the full set (exact)."""
        plan = check_plan(plan, "Session.evaluate")
        check_choice(kind, ("quick", "full"), "Session.evaluate", "kind")
        key = (plan_key(plan), kind)
        with self._lock:
            if key in self._results:
                return self._results[key]
        t0 = time.perf_counter()
        hyps, restart = self._run_kind(plan, kind, cancel)
        order = self._order(kind)
        refs = [self.eval_set.texts[i] for i in order]
        ids = [self.eval_set.ids[i] for i in order]
        wer, cer, per = score(refs, hyps, ids)
        if hasattr(self, "_baseline_hyps"):
            base_wer, base_cer, base_per = score(refs, self._baseline_hyps[kind], ids)
        else:  # constructing the baseline itself
            base_wer, base_cer, base_per = wer, cer, per
        stderr = 0.0
        if kind == "quick":
            # Paired ratio estimate: full baseline WER + subset change; SE from per-utterance deltas.
            words = sum(p.words for p in per) or 1
            d = torch.tensor([(p.word_errors - b.word_errors) for p, b in zip(per, base_per)],
                             dtype=torch.float64)
            stderr = float(d.std(unbiased=True) * math.sqrt(len(d)) / words) if len(d) > 1 else 0.0
            full = self.baseline_full
            wer_out, cer_out = full.wer + (wer - base_wer), full.cer + (cer - base_cer)
        else:
            wer_out, cer_out = wer, cer
        by_index = dict(zip(order, hyps))
        result = WerEstimate(kind, max(0.0, wer_out), max(0.0, cer_out), wer - base_wer,
                             cer - base_cer, stderr, len(order), (time.perf_counter() - t0) * 1e3,
                             restart, key[0], tuple(by_index[i] for i in sorted(by_index)),
                             source=("estimated: paired change on a fixed subset of "
                                     f"{len(order)} utterances, ± 1 standard error")
                             if kind == "quick" else
                             f"measured: greedy CTC on all {len(order)} utterances (jiwer)")
        return self._remember(key, result)

    def rebased(self, model: CTCModel) -> Session:
        """A new Session on `model` (e.g. a recovered model) with this one's eval set, quick
        subset and settings, so its numbers compare with this one's utterance for utterance.
        Runs the new baseline on the full set (a model run: call it from a job)."""
        return Session(model, self.eval_set, **self._settings)

    @property
    def quick_indices(self) -> list[int]:
        """Eval-set indices of the fixed quick subset."""
        return sorted(self._parts["quick"].order)

    @property
    def quick_is_full(self) -> bool:
        """True when the quick subset is the whole eval set (then a quick run adds nothing)."""
        return not self._parts["rest"].order


def check_cancel(cancel: Callable[[], bool] | None) -> None:
    """Raise Cancelled when `cancel()` returns True (None: never)."""
    if cancel is not None and cancel():
        raise Cancelled()
