"""Corpus builders: synthetic speech (train/dev/test), real Asterisk prompts (finetune/test), and the
small eval sets shipped in the repo's data/ folder.

Layout written by build_all(out_dir):
    out_dir/synth/{train,dev,test}.jsonl   + synth/audio/<split>/<id>.flac
    out_dir/real/{finetune,test}.jsonl     + real/audio/<id>.flac, real/rejected.json
All builders are idempotent: a finished manifest is kept, and audio already on disk is reused
(file names carry a hash of what was synthesized, so a changed job never reuses a stale file).
"""
from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
import random
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import soundfile as sf
import torch
from tqdm import tqdm  # text bars on stderr (tqdm.auto would pull in ipywidgets in Jupyter)

from workbench.data import asterisk
from workbench.data.audio import load_audio, save_flac
from workbench.data.corpus import build_sentences, split_sentences, vocabulary
from workbench.data.manifest import Utterance, read_manifest, write_manifest
from workbench.data.synth import SynthSettings, Voice, require_engines, synthesize, voice_catalogue
from workbench.errors import DataError
from workbench.paths import REPO_ROOT

#: Share of utterances per engine. Festival costs ~0.4 s per call (vs ~0.03 s espeak-ng), so it
#: gets a small share; flite's few voices are natural-sounding, so they get more than their count.
ENGINE_WEIGHTS = {"espeak-ng": 0.76, "flite": 0.20, "festival": 0.04}
BUILD_VERSION = 1  # bump when synthesis changes so old audio is not reused


@dataclass(frozen=True)
class SynthJob:
    """One utterance to synthesize (picklable: runs in a worker process)."""

    id: str
    text: str
    voice: Voice
    settings: SynthSettings
    path: Path


def _job_hash(text: str, voice: Voice, settings: SynthSettings) -> str:
    key = json.dumps([BUILD_VERSION, text, voice.id, settings.rate, settings.pitch])
    return hashlib.blake2b(key.encode(), digest_size=4).hexdigest()


def plan_jobs(split: str, sentences: tuple[str, ...], voices: tuple[Voice, ...], n: int,
              seed: int, audio_dir: Path) -> list[SynthJob]:
    """n jobs for one split: sentences in a seeded order (each used once before any repeats),
    engine by ENGINE_WEIGHTS among the engines present, then an accent (espeak-ng) uniformly, then a
    voice uniformly, and random speed (x0.8-1.25) and pitch. Job i does not depend on n."""
    if not sentences or not voices:
        raise DataError(f"{split}: no sentences or no voices to synthesize "
                        f"({len(sentences)} sentences, {len(voices)} voices)")
    rng = random.Random(f"{seed}-{split}")
    by_engine: dict[str, dict[str, list[Voice]]] = {e: {} for e in ENGINE_WEIGHTS}
    for v in voices:  # engine -> group -> voices; an espeak-ng group is an accent
        by_engine[v.engine].setdefault(v.name.partition("+")[0], []).append(v)
    engines = [e for e in ENGINE_WEIGHTS if by_engine[e]]
    weights = [ENGINE_WEIGHTS[e] for e in engines]
    order: list[str] = []
    jobs = []
    for i in range(n):
        if not order:
            order = list(sentences)
            rng.shuffle(order)
            order.reverse()  # pop() from the end walks the shuffled order
        text = order.pop()
        groups = by_engine[rng.choices(engines, weights)[0]]
        voice = rng.choice(groups[rng.choice(sorted(groups))])  # accents equally likely
        settings = SynthSettings(rate=round(rng.uniform(0.8, 1.25), 3), pitch=rng.randint(25, 75))
        # the id names the voice, so results can be broken down by engine and voice later
        utt_id = f"{split}-{i:05d}-{voice.engine}-{voice.name}-{_job_hash(text, voice, settings)}"
        jobs.append(SynthJob(utt_id, text, voice, settings, audio_dir / split / f"{utt_id}.flac"))
    return jobs


def voice_of(utt_id: str) -> Voice | None:
    """The voice a synthetic utterance id names ('<split>-<i>-<engine>-<voice>-<hash>'), or None."""
    parts = utt_id.split("-", 2)
    if len(parts) < 3:
        return None
    for engine in ENGINE_WEIGHTS:
        if parts[2].startswith(engine + "-"):
            name = parts[2][len(engine) + 1:].rpartition("-")[0]
            return Voice(engine, name) if name else None
    return None


def _init_worker() -> None:
    torch.set_num_threads(1)  # two processes share two cores; more threads only contend


def run_job(job: SynthJob) -> tuple[str, float | None, str]:
    """Synthesize one job to FLAC (or reuse the file) -> (id, duration s or None, error)."""
    try:
        if job.path.is_file():
            return job.id, sf.info(str(job.path)).duration, ""
        wave = synthesize(job.text, job.voice, job.settings)
        save_flac(job.path, wave)
        return job.id, wave.numel() / 16_000, ""
    except (DataError, RuntimeError, OSError, ValueError) as e:
        return job.id, None, f"{job.voice.id}: {e}"


def run_jobs(jobs: list[SynthJob], workers: int = 2, progress: bool = True, desc: str = "synthesize"
             ) -> tuple[list[Utterance], list[str]]:
    """Run jobs on a pool of `workers` processes with a progress bar on stderr."""
    results = []
    bar = tqdm(total=len(jobs), desc=desc, unit="utt", disable=not progress, file=sys.stderr)
    if workers <= 1:
        for job in jobs:
            results.append(run_job(job))
            bar.update()
    else:
        ctx = mp.get_context("spawn")  # no fork of a process that may hold torch threads
        with ctx.Pool(workers, initializer=_init_worker) as pool:
            for r in pool.imap(run_job, jobs, chunksize=8):
                results.append(r)
                bar.update()
    bar.close()
    utts, errors = [], []
    for job, (_, duration, err) in zip(jobs, results, strict=True):
        if duration is None:
            errors.append(err)
        else:
            utts.append(Utterance(job.path, duration, job.text, job.id))
    if len(errors) > max(2, 0.05 * len(jobs)):
        raise DataError(f"{desc}: {len(errors)} of {len(jobs)} utterances failed; first: {errors[0]}")
    return utts, errors


def build_corpus(out_dir: Path | str, n_train: int = 4000, n_dev: int = 300, n_test: int = 150,
                 seed: int = 0, progress: bool = True, workers: int = 2,
                 install_system_packages: bool = False) -> dict:
    """Synthesize train/dev/test into out_dir. Test uses held-out voices AND held-out sentences;
    dev uses held-out sentences with train voices. Returns a summary (counts, hours, speed)."""
    out_dir = Path(out_dir)
    require_engines(install_system_packages=install_system_packages)
    voices = voice_catalogue()
    train_voices = tuple(v for v in voices if not v.held_out)
    test_voices = tuple(v for v in voices if v.held_out)
    sentences = build_sentences(seed)
    split = split_sentences(sentences)
    summary: dict = {"sentences": {"train": len(split.train), "dev": len(split.dev),
                                   "test": len(split.test), "distinct_words": len(vocabulary(sentences))},
                     "voices": {"train": len(train_voices), "test": len(test_voices)}}
    t0 = time.perf_counter()
    plans = {name: plan_jobs(name, pool, voice_set, n, seed, out_dir / "audio")
             for name, pool, voice_set, n in (("train", split.train, train_voices, n_train),
                                              ("dev", split.dev, train_voices, n_dev),
                                              ("test", split.test[:n_test], test_voices, n_test))}
    done = {name: _finished(out_dir / f"{name}.jsonl", jobs) for name, jobs in plans.items()}
    pending = [j for name, jobs in plans.items() if done[name] is None for j in jobs]
    synthesized = sum(not j.path.is_file() for j in pending)
    made, errors = run_jobs(pending, workers, progress, desc="synthesize") if pending else ([], [])
    by_id = {u.id: u for u in made}
    for name, jobs in plans.items():
        utts = done[name]
        if utts is None:
            utts = [by_id[j.id] for j in jobs if j.id in by_id]
            write_manifest(utts, out_dir / f"{name}.jsonl")
        summary[name] = {"utterances": len(utts),
                         "hours": round(sum(u.duration for u in utts) / 3600, 3)}
    if errors:
        summary["failed"] = errors[:5]
    seconds = time.perf_counter() - t0
    summary["synthesized_now"] = synthesized
    summary["seconds"] = round(seconds, 1)
    if synthesized:
        summary["utterances_per_second"] = round(synthesized / seconds, 1)
    return summary


def _finished(manifest: Path, jobs: list[SynthJob]) -> list[Utterance] | None:
    """The manifest's utterances if it exists and lists exactly these jobs, else None."""
    if not manifest.is_file():
        return None
    utts = read_manifest(manifest)
    return utts if [u.id for u in utts] == [j.id for j in jobs] else None


def _real_id(name: str) -> str:
    return name.replace("/", "__")


def build_real(out_dir: Path | str, progress: bool = True,
               install_system_packages: bool = False) -> dict:
    """Asterisk prompts -> out_dir/{finetune,test}.jsonl + 16 kHz FLAC; see workbench.data.asterisk.

    The prompt list is re-scanned on every call (it takes ~0.1 s), so transcript fixes reach the
    manifests; audio already converted is reused. Without the Debian packages, existing manifests
    are used as they are.
    """
    out_dir = Path(out_dir)
    have = (out_dir / "finetune.jsonl").is_file() and (out_dir / "test.jsonl").is_file()
    installed = asterisk.SOUNDS_DIR.is_dir() and asterisk.TRANSCRIPTS.is_file()
    if have and not installed:
        ft, te = read_manifest(out_dir / "finetune.jsonl"), read_manifest(out_dir / "test.jsonl")
    else:
        _require_asterisk(install_system_packages)
        prompts, rejected = asterisk.scan_prompts()
        ft, te = [], []
        for p in tqdm(prompts, desc="real prompts", unit="utt", disable=not progress, file=sys.stderr):
            path = out_dir / "audio" / f"{_real_id(p.name)}.flac"
            if path.is_file():
                duration = sf.info(str(path)).duration
            else:
                wave = load_audio(p.path)  # 8 kHz telephone audio -> 16 kHz
                save_flac(path, wave)
                duration = wave.numel() / 16_000
            utt = Utterance(path, duration, p.text, _real_id(p.name))
            (te if asterisk.split_of(p.name, duration) == "test" else ft).append(utt)
        for name, utts in (("finetune", ft), ("test", te)):
            if not (out_dir / f"{name}.jsonl").is_file() or \
                    _key(read_manifest(out_dir / f"{name}.jsonl")) != _key(utts):
                write_manifest(utts, out_dir / f"{name}.jsonl")
        (out_dir / "rejected.json").write_text(json.dumps([asdict(r) for r in rejected], indent=1) + "\n")
    return {name: {"utterances": len(u), "minutes": round(sum(x.duration for x in u) / 60, 2)}
            for name, u in (("finetune", ft), ("test", te))}


def _key(utts: list[Utterance]) -> list[tuple[str, str]]:
    return [(u.id, u.text) for u in utts]


def _require_asterisk(install_system_packages: bool = False) -> None:
    from workbench.data.system import how_to_install, install_debian_packages

    if asterisk.SOUNDS_DIR.is_dir() and asterisk.TRANSCRIPTS.is_file():
        return
    pkgs = list(asterisk.DEBIAN_PACKAGES)
    if install_system_packages and install_debian_packages(pkgs):
        if asterisk.SOUNDS_DIR.is_dir() and asterisk.TRANSCRIPTS.is_file():
            return
    raise DataError(f"real speech prompts missing ({asterisk.SOUNDS_DIR}); {how_to_install(pkgs)}")


def build_all(out_dir: Path | str, n_train: int = 4000, seed: int = 0, progress: bool = True,
              install_system_packages: bool = False) -> dict:
    """Synthetic corpus (out_dir/synth) + real splits (out_dir/real); idempotent; returns a summary.

    Refuses a folder inside the workbench checkout: training audio (~200 MB for 4,000
    utterances) is built on demand into the user cache, never committed.
    """
    out_dir = Path(out_dir).expanduser().resolve()
    if out_dir == REPO_ROOT or REPO_ROOT in out_dir.parents:
        raise DataError(f"{out_dir}: is inside the workbench repository; build the corpus outside "
                        "it (default: ~/.cache/workbench/corpus)")
    return {"synth": build_corpus(out_dir / "synth", n_train=n_train, seed=seed, progress=progress,
                                  install_system_packages=install_system_packages),
            "real": build_real(out_dir / "real", progress=progress,
                               install_system_packages=install_system_packages)}


def _copy_set(utts: list[Utterance], dest: Path) -> list[Utterance]:
    """Copy audio into dest/audio (cleared first) and write dest/manifest.jsonl."""
    audio = dest / "audio"
    if audio.is_dir():
        shutil.rmtree(audio)
    audio.mkdir(parents=True)
    out = []
    for u in utts:
        target = audio / f"{u.id}.flac"
        shutil.copyfile(u.audio_path, target)
        out.append(Utterance(target, u.duration, u.text, u.id))
    write_manifest(out, dest / "manifest.jsonl")
    return out


def write_eval_sets(corpus_dir: Path | str, data_dir: Path | str, n_calib_synth: int = 32,
                    n_calib_real: int = 16, seed: int = 0) -> dict:
    """The small sets shipped in the repo: real_test (all held-out prompts), synth_test (the
    held-out synthetic test split) and calib (short TRAIN-side utterances for compression
    calibration: synthetic train + real finetune, 1-4 s each)."""
    corpus_dir, data_dir = Path(corpus_dir), Path(data_dir)
    rng = random.Random(f"{seed}-calib")
    real_test = read_manifest(corpus_dir / "real" / "test.jsonl")
    synth_test = read_manifest(corpus_dir / "synth" / "test.jsonl")
    short = lambda u: 1.0 <= u.duration <= 4.0  # noqa: E731
    synth_train = [u for u in read_manifest(corpus_dir / "synth" / "train.jsonl") if short(u)]
    real_ft = [u for u in read_manifest(corpus_dir / "real" / "finetune.jsonl") if short(u)]
    calib = rng.sample(synth_train, n_calib_synth) + rng.sample(real_ft, n_calib_real)
    out = {}
    for name, utts in (("real_test", real_test), ("synth_test", synth_test), ("calib", calib)):
        copied = _copy_set(utts, data_dir / name)
        out[name] = {"utterances": len(copied),
                     "minutes": round(sum(u.duration for u in copied) / 60, 2),
                     "megabytes": round(sum(u.audio_path.stat().st_size for u in copied) / 1e6, 2)}
    return out
