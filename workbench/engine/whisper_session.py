"""The interactive engine for the full Whisper model: quick / full WER of a plan, re-running only
what the plan changed.

What is cached (the CTC `workbench.engine.session.Session` does the same for the encoder-only models):
- the eval set's log-mel features with the 1 s silence margin, batched once by length;
- encoder hidden states at the input of every encoder block, keyed by the plan entries of
  everything before that block, and the encoder output + the silence-tail encoding keyed by the
  plan entries of the whole encoder: a decoder-only change re-runs only the decoder, an encoder
  change restarts from the first encoder block it touches;
- compressed modules per (unit, entries): a slider move compresses one block again, the model is
  assembled from shared baseline modules and cached compressed ones (never modifying the baseline).
The decoder (autoregressive, greedy, KV-cached) always re-runs: its input tokens depend on every
decoder layer. A quick estimate runs on a fixed subset (16 utterances): the subset's paired WER
change is added to the full baseline WER, with its standard error; the full set is the quick
subset plus the rest, so the subset's work is reused.

`submit` / `wait` / `cancel` come from `BackgroundEval`, as the CTC Session's (quick then full
as one INTERACTIVE job of the engine's queue JOBS; a newer submit cancels stale work between
encoder blocks and decoder batches), so the dashboard's controller drives both engines the same
way. Model runs hold the engine's RUN_LOCK; the caches are the session's own.
"""
from __future__ import annotations

import copy
import hashlib
import json
import math
import threading
import time
from collections import OrderedDict
from typing import Literal
from collections.abc import Callable

import torch

from workbench.evaluate import EvalSet, batches, check_eval_set, score
from workbench.features import FRAMES_PER_SECOND, collate_features
from workbench.models.layers import lengths_to_pad_mask
from workbench.models.whisper_full import WhisperASR, WhisperTokenizer
from workbench.engine.session import BackgroundEval, WerEstimate, check_cancel, plan_key
from workbench.whisper_eval import (MARGIN_FRAMES, SILENCE, decode_all, with_margin)
from workbench.compress.resolution import resolve
from workbench.checks import check_choice, check_int, check_plan
from workbench.compress import compress, compress_module
from workbench.data import normalize_text
from workbench.errors import ArgumentError
from workbench.plan import CompressionPlan


def _sig(entries: dict) -> str:
    dump = {p: c.model_dump(mode="json") for p, c in sorted(entries.items())}
    return hashlib.sha1(json.dumps(dump, sort_keys=True).encode()).hexdigest()[:12]


class WhisperSession(BackgroundEval):
    """Baseline WhisperASR + eval set; `evaluate(plan, "quick" | "full")` -> WerEstimate."""

    def __init__(self, model: WhisperASR, tokenizer: WhisperTokenizer, eval_set: EvalSet, *,
                 quick_utterances: int = 16, max_frames: int = 12_000, seed: int = 0) -> None:
        if not isinstance(model, WhisperASR):
            raise ArgumentError(
                f"WhisperSession(model=...): expected a full Whisper model (WhisperASR: encoder "
                f"+ decoder, workbench.models.whisper_full.load_whisper_asr()), got "
                f"{type(model).__name__}; for a CTC model use workbench.Session.")
        if not callable(getattr(tokenizer, "decode", None)):
            raise ArgumentError(
                f"WhisperSession(tokenizer=...): expected a tokenizer with decode(ids) -> str "
                f"(workbench.models.whisper_full.WhisperTokenizer()), got "
                f"{type(tokenizer).__name__}.")
        check_eval_set(eval_set, "WhisperSession")
        check_int(quick_utterances, "WhisperSession", "quick_utterances", low=1)
        check_int(max_frames, "WhisperSession", "max_frames", low=100)
        check_int(seed, "WhisperSession", "seed", low=0)
        self.baseline = copy.deepcopy(model).eval()
        self.tokenizer = tokenizer
        self.eval_set = eval_set
        self.n_enc = len(self.baseline.encoder.blocks)
        self.n_dec = len(self.baseline.decoder.blocks)
        n = len(eval_set)
        rng = torch.Generator().manual_seed(seed)
        quick = sorted(torch.randperm(n, generator=rng)[: min(quick_utterances, n)].tolist())
        rest = sorted(set(range(n)) - set(quick))
        feats = [with_margin(f, MARGIN_FRAMES) for f in eval_set.features]
        self._parts = {}
        for name, idx in (("quick", quick), ("rest", rest)):
            groups = [[idx[j] for j in g] for g in batches([feats[i].shape[-1] for i in idx],
                                                           max_frames)]
            self._parts[name] = (groups, [collate_features([feats[i] for i in g]) for g in groups])
        self._kinds = {"quick": ("quick",), "full": ("quick", "rest")}
        self._seconds = [f.shape[-1] / FRAMES_PER_SECOND for f in eval_set.features]
        self._hidden: OrderedDict[tuple, list] = OrderedDict()
        self._units: OrderedDict[tuple, torch.nn.Module] = OrderedDict()
        self._results: OrderedDict[tuple, WerEstimate] = OrderedDict()
        self._lock = threading.RLock()      # guards _results and the worker's generation
        self._generation = 0
        empty = CompressionPlan()
        self._baseline_hyps = {k: self._hyps(empty, k)[0] for k in self._kinds}
        self.baseline_full = self.evaluate(empty, "full")

    # ---- plan structure -------------------------------------------------------------------
    def _stage(self, path: str) -> int:
        """Encoder stage of a path: 0 stem, 1 + i for encoder block i, n_enc + 1 for ln_post;
        -1 for the decoder."""
        if not path.startswith("encoder."):
            return -1
        parts = path.split(".")
        if parts[1] == "blocks":
            return 1 + int(parts[2])
        return self.n_enc + 1 if parts[1] == "ln_post" else 0

    def _resolved(self, plan) -> dict:
        return {p: c for p, c in resolve(plan, self.baseline).items() if not c.is_empty()}

    def _encoder_sigs(self, resolved: dict) -> list[str]:
        parts: list[dict] = [{} for _ in range(self.n_enc + 2)]
        for path, cfg in resolved.items():
            if (stage := self._stage(path)) >= 0:
                parts[stage][path] = cfg
        return [_sig(p) for p in parts]

    def _unit(self, unit: str, entries: dict) -> torch.nn.Module:
        base = self.baseline.get_submodule(unit)
        if not entries:
            return base
        key = (unit, _sig(entries))
        if key not in self._units:
            self._units[key] = compress_module(base, entries, model=self.baseline,
                                               prefix=unit).model.eval()
            while len(self._units) > 256:
                self._units.popitem(last=False)
        return self._units[key]

    def compressed_model(self, plan) -> WhisperASR:
        """The baseline with `plan` applied, assembled from cached compressed units (a block, the
        stem convs, the tied embedding); untouched modules are the baseline's own, shared."""
        return self._compressed(plan, self._resolved(plan))

    def _compressed(self, plan, resolved: dict) -> WhisperASR:
        """compressed_model, given `plan` already resolved (self._resolved)."""
        if not resolved:
            return self.baseline

        def entries_of(unit: str) -> dict:
            out = {p[len(unit) + 1:]: c for p, c in resolved.items() if p.startswith(unit + ".")}
            if unit in resolved:
                out[""] = resolved[unit]
            return out

        units = ([f"encoder.blocks.{i}" for i in range(self.n_enc)]
                 + [f"decoder.blocks.{i}" for i in range(self.n_dec)]
                 + ["encoder.conv1", "encoder.conv2", "decoder.token_embedding"])
        covered = {p for p in resolved if any(p == u or p.startswith(u + ".") for u in units)}
        if covered != set(resolved):
            return compress(self.baseline, plan).eval()
        model = copy.copy(self.baseline)
        model._modules = dict(self.baseline._modules)
        for side in ("encoder", "decoder"):
            part = copy.copy(getattr(self.baseline, side))
            part._modules = dict(getattr(self.baseline, side)._modules)
            n = self.n_enc if side == "encoder" else self.n_dec
            part.blocks = torch.nn.ModuleList(self._unit(f"{side}.blocks.{i}",
                                                         entries_of(f"{side}.blocks.{i}"))
                                              for i in range(n))
            model._modules[side] = part
        for unit in ("encoder.conv1", "encoder.conv2", "decoder.token_embedding"):
            side, name = unit.split(".")
            model._modules[side]._modules[name] = self._unit(unit, entries_of(unit))
        return model

    # ---- evaluation ---------------------------------------------------------------------
    def _put(self, key: tuple, value) -> None:
        self._hidden[key] = value
        self._hidden.move_to_end(key)
        while len(self._hidden) > 64:
            self._hidden.popitem(last=False)

    @torch.inference_mode()
    def _encode(self, model: WhisperASR, sigs: list[str], part: str,
                cancel: Callable[[], bool] | None = None) -> tuple[list, int]:
        """Encoder outputs per item of `part` (T'_i, D) and the stage it restarted from."""
        key = (part, "out", tuple(sigs))
        if key in self._hidden:
            return self._hidden[key], self.n_enc + 2
        groups, inputs = self._parts[part]
        enc = model.encoder
        start, states = 0, None
        for k in range(self.n_enc, -1, -1):   # deepest cached block input matching the prefix
            hit = self._hidden.get((part, k, tuple(sigs[:k + 1])))
            if hit is not None:
                start, states = k, hit
                break
        restart = start if states is not None else -1
        if states is None:
            states = [enc.stem(x, lens) for x, lens in inputs]
            self._put((part, 0, tuple(sigs[:1])), states)
        for k in range(start, self.n_enc):
            check_cancel(cancel)
            states = [(enc.blocks[k](h, lengths_to_pad_mask(lens, h.shape[1])), lens)
                      for h, lens in states]
            self._put((part, k + 1, tuple(sigs[:k + 2])), states)
        out = {}
        for g, (h, lens) in zip(groups, states):
            h = enc.ln_post(h)
            for j, i in enumerate(g):
                out[i] = h[j, :int(lens[j])]
        self._put(key, out)
        return out, restart

    @torch.inference_mode()
    def _tail(self, model: WhisperASR, sigs: list[str]) -> torch.Tensor:
        key = ("tail", tuple(sigs))
        if key not in self._hidden:
            n = model.encoder.config.n_ctx * 2
            silence = torch.full((1, model.encoder.config.n_mels, n), SILENCE)
            self._put(key, model.encoder.encode(silence)[0])
        return self._hidden[key]

    def _hyps(self, plan, kind: str, cancel: Callable[[], bool] | None = None,
              resolved: dict | None = None) -> tuple[list[str], list[int], int]:
        if resolved is None:
            resolved = self._resolved(plan)
        sigs = self._encoder_sigs(resolved)
        model = self._compressed(plan, resolved)
        tail = self._tail(model, sigs)
        hyps, order, restarts = [], [], []
        for part in self._kinds[kind]:
            encoded, restart = self._encode(model, sigs, part, cancel)
            restarts.append(restart)
            idx = sorted(encoded)
            ids = decode_all(model, [encoded[i] for i in idx], [self._seconds[i] for i in idx],
                             tail, before_batch=lambda: check_cancel(cancel))
            hyps += [normalize_text(self.tokenizer.decode(t)) for t in ids]
            order += idx
        return hyps, order, min(restarts)

    def evaluate(self, plan, kind: Literal["quick", "full"] = "full",
                 cancel: Callable[[], bool] | None = None) -> WerEstimate:
        """WER / CER of `plan` on the quick subset (estimate + stderr) or the full set (exact).
        `restart_block` says where the encoder restarted: -1 the features, k encoder block k,
        n_enc + 2 nothing (cached encoder output; decoder only). `cancel()` returning True stops
        the run (workbench.engine.session.Cancelled) between encoder blocks and decoder batches.
        A plan naming a path this model lacks raises PlanError before any model run."""
        plan = check_plan(plan, "WhisperSession.evaluate")
        check_choice(kind, ("quick", "full"), "WhisperSession.evaluate", "kind")
        if cancel is not None and not callable(cancel):
            raise ArgumentError(f"WhisperSession.evaluate(cancel=...): expected None or a "
                                f"callable returning True to stop, got {type(cancel).__name__}.")
        key = (plan_key(plan), kind)
        with self._lock:    # a hit costs no resolve: the plan resolved when it was cached
            if key in self._results:
                return self._results[key]
        resolved = self._resolved(plan)  # PlanError (unknown path, bad setting) before any work
        t0 = time.perf_counter()
        hyps, order, restart = self._hyps(plan, kind, cancel, resolved)
        refs = [self.eval_set.texts[i] for i in order]
        ids = [self.eval_set.ids[i] for i in order]
        wer, cer, per = score(refs, hyps, ids)
        if hasattr(self, "baseline_full"):
            base_wer, base_cer, base_per = score(refs, self._baseline_hyps[kind], ids)
        else:
            base_wer, base_cer, base_per = wer, cer, per
        stderr = 0.0
        wer_out, cer_out = wer, cer
        if kind == "quick" and hasattr(self, "baseline_full"):
            words = sum(p.words for p in per) or 1
            d = torch.tensor([p.word_errors - b.word_errors for p, b in zip(per, base_per)],
                             dtype=torch.float64)
            stderr = float(d.std(unbiased=True) * math.sqrt(len(d)) / words) if len(d) > 1 else 0.0
            wer_out = self.baseline_full.wer + (wer - base_wer)
            cer_out = self.baseline_full.cer + (cer - base_cer)
        by_index = dict(zip(order, hyps))
        result = WerEstimate(
            kind, max(0.0, wer_out), max(0.0, cer_out), wer - base_wer, cer - base_cer, stderr,
            len(order), (time.perf_counter() - t0) * 1e3, restart, key[0],
            tuple(by_index[i] for i in sorted(by_index)),
            source=(f"estimated (Whisper tiny.en, greedy decoder): paired change on a fixed subset "
                    f"of {len(order)} utterances, ± 1 standard error") if kind == "quick" else
            f"measured (Whisper tiny.en, greedy decoder) on all {len(order)} utterances (jiwer)")
        return self._remember(key, result)

    @property
    def quick_indices(self) -> list[int]:
        """Eval-set indices of the fixed quick subset."""
        return sorted(i for g in self._parts["quick"][0] for i in g)

    @property
    def quick_is_full(self) -> bool:
        """True when the quick subset is the whole eval set (then a quick run adds nothing)."""
        return not self._parts["rest"][0]
