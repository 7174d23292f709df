"""Evaluate a model and a plan on the conditions grid: WER / CER per condition, per voice, per length.

    result = evaluate_conditions(model, plan)          # default grid on the shipped real test set
    result.rows[i].baseline_wer, .plan_wer, .delta_wer
    result.markdown()                                  # the model card's "accuracy by condition"

How it is fast and repeatable:
- each condition's log-mel features are computed once and cached on disk (user cache, keyed by the
  condition, the seed and the manifest's content), so a second run reads features, not audio;
- the plan is applied once, and the baseline and the compressed model each transcribe every
  condition once (batched greedy CTC); each hypothesis list is scored once;
- the baseline's transcripts depend only on its weights and the features: a caller that runs
  several plans on one model (the Conditions tab) passes a `BaselineCache(model)` it keeps, and
  a run for another plan transcribes only the plan's model;
- all randomness is seeded per (seed, condition, utterance id): the same audio on every run, so
  the same numbers (checked by a test and by `workbench bench conditions`).
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm

from workbench.checks import check_model, check_plan
from workbench.compress import compress
from workbench.conditions.grid import Condition, degrade, resolve_grid
from workbench.data import load_audio, normalize_text
from workbench.data.build import voice_of
from workbench.errors import (
    ArgumentError,
    Cancelled,  # raised when cancel() returns True; re-exported
)
from workbench.evaluate import EvalSet, score, transcribe
from workbench.features import log_mel
from workbench.models.digest import weights_digest
from workbench.paths import cache_dir

#: Bump when degrade() or the features change, so old cached features are not reused.
CACHE_VERSION = "2"  # 2: reverberation by a power-of-two FFT (differences <= 3e-6)
#: Length bins (seconds of clean audio) of the per-length breakdown.
LENGTH_BINS = ((0.0, 2.0, "< 2 s"), (2.0, 4.0, "2-4 s"), (4.0, 1e9, ">= 4 s"))


class BaselineCache:
    """Baseline transcripts of one model per condition set, kept by the caller across runs of
    evaluate_conditions (a few kB per condition set). Keyed by the digest of the model's
    weights, taken once here (the model must not change while the cache is used: the
    Conditions tab's model is its Session's private baseline), and of each set's features."""

    def __init__(self, model: torch.nn.Module, kept: int = 128) -> None:
        self.model = model
        self.weights = weights_digest(model)
        self.kept = kept
        self._hyps: OrderedDict[tuple[str, str], tuple[str, ...]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: tuple[str, str]) -> tuple[str, ...] | None:
        with self._lock:
            return self._hyps.get(key)

    def put(self, key: tuple[str, str], hyps: tuple[str, ...]) -> None:
        with self._lock:
            self._hyps[key] = hyps
            while len(self._hyps) > self.kept:
                self._hyps.popitem(last=False)


@dataclass(frozen=True)
class ConditionRow:
    condition: str
    group: str
    eval_set: str
    utterances: int
    baseline_wer: float
    baseline_cer: float
    plan_wer: float | None = None
    plan_cer: float | None = None

    @property
    def delta_wer(self) -> float | None:
        return None if self.plan_wer is None else self.plan_wer - self.baseline_wer


@dataclass(frozen=True)
class BreakdownRow:
    """WER of one slice (a voice, or a length bin under one condition)."""

    condition: str
    eval_set: str
    key: str
    utterances: int
    words: int
    baseline_wer: float
    plan_wer: float | None = None


@dataclass(frozen=True)
class ConditionsResult:
    rows: tuple[ConditionRow, ...]
    by_voice: tuple[BreakdownRow, ...]
    by_length: tuple[BreakdownRow, ...]
    seed: int
    plan_name: str | None
    seconds: float
    feature_seconds: float
    conditions_from_cache: int
    skipped: tuple[str, ...] = ()
    baselines_from_cache: int = 0  # condition sets whose baseline transcripts were kept
    source: str = ("measured: greedy CTC on degraded copies of the shipped test audio (seeded), "
                   "WER / CER with jiwer")
    hypotheses: dict = field(default_factory=dict, repr=False, compare=False)

    def row(self, condition: str) -> ConditionRow:
        for r in self.rows:
            if r.condition == condition:
                return r
        raise KeyError(condition)

    def numbers(self) -> list[tuple]:
        """(condition, baseline WER, CER, plan WER, CER) rounded to 6 digits: for equality checks."""
        rnd = lambda v: None if v is None else round(v, 6)  # noqa: E731
        return [(r.condition, rnd(r.baseline_wer), rnd(r.baseline_cer), rnd(r.plan_wer),
                 rnd(r.plan_cer)) for r in self.rows]

    def to_dict(self) -> dict:
        return {"rows": [{**asdict(r), "delta_wer": r.delta_wer} for r in self.rows],
                "by_voice": [asdict(r) for r in self.by_voice],
                "by_length": [asdict(r) for r in self.by_length],
                "seed": self.seed, "plan": self.plan_name, "seconds": round(self.seconds, 2),
                "feature_seconds": round(self.feature_seconds, 2),
                "conditions_from_cache": self.conditions_from_cache,
                "baselines_from_cache": self.baselines_from_cache,
                "skipped": list(self.skipped), "source": self.source}

    def markdown(self, baseline_label: str = "baseline", plan_label: str = "plan") -> str:
        """The 'accuracy by condition' table (WER %, and the change the plan makes)."""
        pct = lambda v: "-" if v is None else f"{100 * v:.1f}"  # noqa: E731
        has_plan = any(r.plan_wer is not None for r in self.rows)
        head = f"| condition | set | utterances | {baseline_label} WER % | {baseline_label} CER % |"
        sep = "|---|---|---:|---:|---:|"
        if has_plan:
            head += f" {plan_label} WER % | {plan_label} CER % | change (WER points) |"
            sep += "---:|---:|---:|"
        lines = [head, sep]
        for r in self.rows:
            line = (f"| {r.condition} | {r.eval_set} | {r.utterances} | {pct(r.baseline_wer)} | "
                    f"{pct(r.baseline_cer)} |")
            if has_plan:
                d = r.delta_wer
                line += (f" {pct(r.plan_wer)} | {pct(r.plan_cer)} | "
                         f"{'-' if d is None else f'{100 * d:+.1f}'} |")
            lines.append(line)
        return "\n".join(lines)


# ---- degraded feature sets (cached) ---------------------------------------------------------

def _file_digest(path: Path) -> str:
    return hashlib.sha1(path.read_bytes()).hexdigest()[:16]


def _load_clean(manifest: Path, limit: int | None = None):
    from workbench.data import read_manifest  # looked up per call: tests monkeypatch it

    utts = read_manifest(manifest)[:limit]
    return utts, [load_audio(u.audio_path) for u in utts], [normalize_text(u.text) for u in utts]


def _cache_path(cond: Condition, manifest: Path, seed: int, root: Path | None = None,
                limit: int | None = None) -> Path:
    key = hashlib.sha1("|".join([CACHE_VERSION, cond.name, str(seed), str(manifest.resolve()),
                                 _file_digest(manifest), str(limit)]).encode()).hexdigest()[:20]
    return (Path(root) if root is not None else cache_dir() / "conditions") / f"{key}.pt"


def _degraded_features(cond: Condition, waves, ids, seed: int, extra: dict, log_mel) -> tuple:
    """log_mel(degrade(...)) of every utterance, on torch.get_num_threads() threads.

    Each utterance's randomness comes from its own seeded stream, so the result does not depend
    on which thread runs it. Why threads: the per-utterance ops (1-D FFTs, resampling, noise)
    are small, torch barely parallelizes them inside one call, and they release the GIL; two
    threads took the feature time of 4 conditions from 16.3 to 7.7 s wall on 2 cores (load ~11)."""
    def one(k: int) -> torch.Tensor:
        return log_mel(degrade(cond, waves[k], ids[k], seed=seed, **extra))

    workers = max(1, min(torch.get_num_threads(), len(waves)))
    if workers == 1:
        return tuple(one(k) for k in range(len(waves)))
    with ThreadPoolExecutor(workers, thread_name_prefix="conditions-features") as pool:
        return tuple(pool.map(one, range(len(waves))))


def condition_sets(grid="default", manifest: Path | str | None = None, *, seed: int = 0,
                   cache: bool = True, progress: bool = True, skip_missing: bool = True,
                   cancel: Callable[[], bool] | None = None, cache_root: Path | None = None,
                   limit: int | None = None
                   ) -> tuple[list[tuple[Condition, EvalSet]], dict]:
    """[(condition, EvalSet of its log-mel features)] and stats {'feature_seconds', 'from_cache',
    'skipped', 'durations'}. Features are read from the user cache when present.
    limit: only the first N utterances of the manifest."""
    from workbench.conditions import sources
    from workbench.paths import REAL_TEST  # looked up per call: tests monkeypatch it

    manifest = Path(manifest) if manifest else REAL_TEST
    conds = list(resolve_grid(grid))
    skipped = []
    if any(c.noise == "moh" for c in conds) and not sources.moh_available():
        if not skip_missing:
            sources.moh_recording()  # raises with the fix
        skipped = [c.name for c in conds if c.noise == "moh"]
        conds = [c for c in conds if c.noise != "moh"]
        print(f"conditions: music on hold skipped ({sources.MOH_DIR} missing; install Debian "
              f"asterisk-moh-opsound-wav)", file=sys.stderr)
    t0 = time.perf_counter()
    clean = None
    out, from_cache = [], 0
    from workbench.data import read_manifest  # looked up per call: tests monkeypatch it
    utts = read_manifest(manifest)[:limit]
    ids = tuple(u.id for u in utts)
    durations = tuple(float(u.duration) for u in utts)
    for cond in tqdm(conds, desc="conditions: features", disable=not progress, leave=False):
        if cancel is not None and cancel():
            raise Cancelled()
        path = _cache_path(cond, manifest, seed, cache_root, limit)
        feats = None
        if cache and path.is_file():
            try:
                stored = torch.load(path, weights_only=True)
                if tuple(stored["ids"]) == ids:
                    feats, texts = tuple(stored["features"]), tuple(stored["texts"])
                    from_cache += 1
            except (OSError, RuntimeError, KeyError, EOFError):
                feats = None  # unreadable cache entry: recompute it
        if feats is None:
            if clean is None:
                _, waves, texts_list = _load_clean(manifest, limit)
                clean = (waves, tuple(texts_list))
            waves, texts = clean
            extra = {}
            if cond.noise == "babble":
                extra["babble"] = sources.babble_sources()
            elif cond.noise == "moh":
                extra["moh"] = sources.moh_recording()
            elif cond.kind == "reverb":
                extra["rir"] = sources.room_for(cond.rt60_s, seed)
            feats = _degraded_features(cond, waves, ids, seed, extra, log_mel)
            if cache:
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp = path.with_suffix(f".tmp{os.getpid()}")
                torch.save({"ids": list(ids), "texts": list(texts), "features": list(feats)}, tmp)
                os.replace(tmp, path)
        out.append((cond, EvalSet(f"{manifest.parent.name} / {cond.name}", manifest, ids,
                                  tuple(texts), feats)))
    stats = {"feature_seconds": time.perf_counter() - t0, "from_cache": from_cache,
             "skipped": tuple(skipped), "durations": durations}
    return out, stats


# ---- evaluation -----------------------------------------------------------------------------

def _slices(base_per, plan_per, keys) -> list[tuple[str, int, int, float, float | None]]:
    """Per key: (key, utterances, words, baseline WER, plan WER) from per-utterance errors
    (score()'s third result), so each hypothesis list is scored once per condition."""
    out = []
    for key in sorted(set(keys), key=str):
        idx = [i for i, k in enumerate(keys) if k == key]
        words = sum(base_per[i].words for i in idx) or 1
        base = sum(base_per[i].word_errors for i in idx) / words
        plan = (sum(plan_per[i].word_errors for i in idx) / words) if plan_per else None
        out.append((key, len(idx), words, base, plan))
    return out


def _length_bin(seconds: float) -> str:
    for lo, hi, name in LENGTH_BINS:
        if lo <= seconds < hi:
            return name
    return LENGTH_BINS[-1][2]


def evaluate_conditions(model, plan=None, *, grid="default", manifest: Path | str | None = None,
                        voice_manifest: Path | str | None = "default", seed: int = 0,
                        cache: bool = True, progress: bool = True,
                        cancel: Callable[[], bool] | None = None,
                        on_progress: Callable[[int, int, str], None] | None = None,
                        plan_name: str | None = None,
                        cache_root: Path | None = None, run_lock=None,
                        limit: int | None = None,
                        baseline_cache: BaselineCache | None = None) -> ConditionsResult:
    """WER / CER of `model` (and of `plan` applied to it) under every condition of `grid`.

    grid: "default" (16 conditions), "full" (24), a comma list ("white:10,reverb:0.6") or
    Condition objects. manifest: the set degraded (default: the shipped real test set).
    voice_manifest: a clean set split by synthetic voice (default: the shipped synthetic test
    set; None to skip). limit: the first N utterances of each set. cache_root: folder of the
    feature cache (default: the user cache's conditions/). cache=False: features recomputed.
    baseline_cache: a BaselineCache(model) the caller keeps across runs (the baseline is then
    transcribed once per condition set); None: transcribed on every run. run_lock: a lock taken
    around each condition's model runs (the UI passes the Session's RUN_LOCK, so a live slider
    evaluation gets in between two conditions). The caller's model is not modified (the plan
    is applied to a new model).
    """
    from workbench.paths import SYNTH_TEST  # looked up per call: tests monkeypatch it

    check_model(model, "evaluate_conditions")
    if baseline_cache is not None and baseline_cache.model is not model:
        raise ArgumentError("evaluate_conditions(baseline_cache=...): a cache made for another "
                            "model; make one per model: BaselineCache(model).")
    if plan is not None:
        plan = check_plan(plan, "evaluate_conditions")
    t0 = time.perf_counter()
    sets, stats = condition_sets(grid, manifest, seed=seed, cache=cache, progress=progress,
                                 cancel=cancel, cache_root=cache_root, limit=limit)
    jobs = [(c, es) for c, es in sets]
    if voice_manifest is not None:
        vm = SYNTH_TEST if voice_manifest == "default" else Path(voice_manifest)
        vsets, vstats = condition_sets(["clean"], vm, seed=seed, cache=cache, progress=False,
                                       cache_root=cache_root, limit=limit)
        jobs += vsets
        stats["feature_seconds"] += vstats["feature_seconds"]
        stats["from_cache"] += vstats["from_cache"]
        voice_durations = vstats["durations"]
    # The plan is applied once (a new model; `model` is not modified) and both models transcribe
    # every condition with the batched greedy decoder. No Session: a condition's audio differs
    # from the others', so the Session's block-input cache never hits across conditions, and
    # building one per condition cost a model copy, a whole-model compress for plans touching
    # the stem or head, a second head run and three extra scorings per condition (cProfile of
    # `workbench bench conditions`).
    lock = run_lock if run_lock is not None else contextlib.nullcontext()
    small = None
    if plan is not None:
        with lock:
            small = compress(model, plan).eval()
    base_kept = 0
    rows, by_voice, by_length, hyps_out = [], [], [], {}
    total = len(jobs)
    for k, (cond, es) in enumerate(tqdm(jobs, desc="conditions: eval", disable=not progress,
                                        leave=False)):
        if cancel is not None and cancel():
            raise Cancelled()
        if on_progress is not None:
            on_progress(k, total, es.name)
        key = base_hyps = None
        if baseline_cache is not None:
            key = (baseline_cache.weights, weights_digest(es.features))
            base_hyps = baseline_cache.get(key)
        if base_hyps is not None:
            base_kept += 1
        else:
            with lock:  # one model run at a time; a live slider evaluation can get in between
                base_hyps = tuple(transcribe(model, es.features))
            if baseline_cache is not None:
                baseline_cache.put(key, base_hyps)
        base_hyps = list(base_hyps)  # jiwer takes lists
        if cancel is not None and cancel():
            raise Cancelled()
        plan_hyps = None
        if small is not None:
            with lock:
                plan_hyps = transcribe(small, es.features)
        base_wer, base_cer, base_per = score(es.texts, base_hyps, es.ids)
        plan_wer = plan_cer = plan_per = None
        if plan_hyps is not None:
            plan_wer, plan_cer, plan_per = score(es.texts, plan_hyps, es.ids)
        is_voice_set = voice_manifest is not None and k >= len(sets)
        set_name = Path(es.manifest).parent.name
        hyps_out[(cond.name, set_name)] = (tuple(base_hyps),
                                           tuple(plan_hyps) if plan_hyps is not None else None)
        rows.append(ConditionRow(cond.name, "voices" if is_voice_set else cond.group, set_name,
                                 len(es), base_wer, base_cer, plan_wer, plan_cer))
        durations = voice_durations if is_voice_set else stats["durations"]
        lengths = [_length_bin(d) for d in durations]
        for key, n, words, bw, pw in _slices(base_per, plan_per, lengths):
            by_length.append(BreakdownRow(cond.name, set_name, key, n, words, bw, pw))
        if is_voice_set:
            voices = []
            for i in es.ids:
                v = voice_of(i)
                voices.append(f"{v.engine} {v.name.split('+')[0]}" if v else "unknown")
            for key, n, words, bw, pw in _slices(base_per, plan_per, voices):
                by_voice.append(BreakdownRow(cond.name, set_name, key, n, words, bw, pw))
    if on_progress is not None:
        on_progress(total, total, "done")
    return ConditionsResult(tuple(rows), tuple(by_voice), tuple(by_length), seed,
                            plan_name if plan is not None else None, time.perf_counter() - t0,
                            stats["feature_seconds"], stats["from_cache"], stats["skipped"],
                            baselines_from_cache=base_kept, hypotheses=hyps_out)
