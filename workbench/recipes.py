"""Training recipes: the shipped demo model, and a Conformer preset from scratch.

Demo (Whisper tiny.en encoder + CTC character head), two stages on 2 CPU cores:
  1. the encoder is frozen; its outputs are computed once and cached, and only the CTC head trains;
  2. the top `finetune_blocks` blocks, ln_post and the head fine-tune from hidden states cached at
     the input of the first fine-tuned block (the frozen bottom runs once, not every step).
Waveform augmentation (speed, noise, rooms, telephone band) is applied when items are made, so each
cached item is one fixed augmented view; SpecAugment cannot apply to cached hidden states.
Data: the synthetic corpus (train split) plus the real-speech fine-tune split, never the test splits.
"""
from __future__ import annotations

import hashlib
import json
import platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from workbench.data import build_all
from workbench.data.audio import load_audio
from workbench.data.augment import AugmentConfig, augment_wave
from workbench.data.text import normalize_text
from workbench.decode import encode_text
from workbench.evaluate import evaluate
from workbench.features import log_mel
from workbench.models import conformer_ctc, save_checkpoint, whisper_ctc_pretrained
from workbench.paths import DEMO_DIR, cache_dir
from workbench.train import Item, TrainConfig, cache_hidden, train_ctc


@dataclass(frozen=True)
class DemoRecipe:
    n_train: int = 4000              # synthetic training utterances
    real_copies: int = 4             # 1 clean + 3 augmented views of each real fine-tune prompt
    finetune_blocks: int = 2         # top blocks trained in stage 2
    stage1: TrainConfig = TrainConfig(steps=1500, lr=2e-3, warmup=100, max_batch_frames=12_000,
                                      spec_augment=False, checkpoint_every=0, max_minutes=5)
    stage2: TrainConfig = TrainConfig(steps=2500, lr=3e-4, warmup=150, max_batch_frames=6_000,
                                      spec_augment=False, checkpoint_every=250, max_minutes=15)
    seed: int = 0


#: Waveform augmentation of the recipes (workbench.data.augment, the one augmentation module):
#: speed and noise as AugmentConfig's defaults, a simulated room 3 times in 10 (from a bank of
#: 24 rooms simulated once), the telephone channel 35 times in 100.
TRAIN_AUGMENT = AugmentConfig(p_reverb=0.3, p_telephone=0.35, n_rooms=24)


def _items(utts, copies: int, augment: bool, seed: int, desc: str, progress: bool = True
           ) -> tuple[list, list]:
    """Utterances -> (features (80, T) list, label tensors list), with augmented views."""
    gen = torch.Generator().manual_seed(seed)
    feats, labels = [], []
    for u in tqdm(utts, desc=desc, leave=False, disable=not progress):
        wave = load_audio(u.audio_path)
        ids = torch.tensor(encode_text(normalize_text(u.text)), dtype=torch.long)
        if len(ids) == 0:
            continue
        for c in range(copies):
            w = augment_wave(wave, TRAIN_AUGMENT, gen) if augment and (c > 0 or copies == 1) \
                else wave
            f = log_mel(w)
            if f.shape[-1] // 2 < len(ids) + 1 or f.shape[-1] > 3000:  # CTC needs T' > labels
                continue
            feats.append(f)
            labels.append(ids)
    return feats, labels


def train_demo(out_dir: Path | None = None, minutes: float | None = None, seed: int = 0,
               corpus_dir: Path | None = None, recipe: DemoRecipe | None = None) -> dict:
    """Fine-tune the demo model and write checkpoint, config, training summary and metrics."""
    from workbench.data import read_manifest  # looked up per call: tests monkeypatch it
    from workbench.evaluate import load_eval_set  # looked up per call: tests monkeypatch it
    from workbench.paths import REAL_TEST, SYNTH_TEST  # looked up per call: tests monkeypatch it

    recipe = recipe or DemoRecipe(seed=seed)
    out_dir = Path(out_dir or DEMO_DIR)
    corpus_dir = Path(corpus_dir or cache_dir() / "corpus")
    torch.manual_seed(recipe.seed)
    torch.set_num_threads(2)
    t0 = time.perf_counter()
    # The corpus is built once at its default size; a smaller recipe uses a prefix of it.
    corpus = build_all(corpus_dir, n_train=max(recipe.n_train, 4000), seed=recipe.seed) or {}
    synth = read_manifest(corpus_dir / "synth" / "train.jsonl")[: recipe.n_train]
    real = read_manifest(corpus_dir / "real" / "finetune.jsonl")
    tag = hashlib.sha1(json.dumps(asdict(recipe), sort_keys=True).encode()).hexdigest()[:10]
    state_dir = cache_dir() / "train_state" / f"demo_{tag}"
    model = whisper_ctc_pretrained()
    k = len(model.blocks) - recipe.finetune_blocks
    items_file = state_dir / "items.pt"   # augmented items' hidden states: made once, reused
    if items_file.is_file():
        saved = torch.load(items_file, weights_only=True)
        hidden_k, labels, n_items = saved["hidden"], saved["labels"], saved["n_items"]
    else:
        f_s, l_s = _items(synth, 1, True, recipe.seed, "synthetic train features")
        f_r, l_r = _items(real, recipe.real_copies, True, recipe.seed + 1, "real fine-tune features")
        feats, labels = f_s + f_r, l_s + l_r
        n_items = len(feats)
        hidden_k = cache_hidden(model, feats, stop=k)
        del feats
        state_dir.mkdir(parents=True, exist_ok=True)
        torch.save({"hidden": hidden_k, "labels": labels, "n_items": n_items},
                   items_file.with_suffix(".tmp"))
        items_file.with_suffix(".tmp").replace(items_file)
    t_data = time.perf_counter() - t0
    with torch.inference_mode():  # outputs of the frozen encoder, for stage 1
        hidden_top = []
        for h in tqdm(hidden_k, desc="cache encoder output", leave=False):
            x = h.float()[None]
            lens = torch.tensor([h.shape[0]])
            mask = torch.zeros(1, h.shape[0], dtype=torch.bool)
            for block in model.blocks[k:]:
                x = block(x, mask)
            hidden_top.append(x[0].half())
    del lens
    t_cache = time.perf_counter() - t0 - t_data
    budget = minutes
    s1 = recipe.stage1 if budget is None else _with_minutes(recipe.stage1, budget * 0.2)
    s2 = recipe.stage2 if budget is None else _with_minutes(recipe.stage2, budget * 0.6)
    # Resumable state lives in state_dir, keyed by the recipe: another recipe never resumes it.
    h1 = train_ctc(model, [Item(h, y, time_last=False) for h, y in zip(hidden_top, labels)], s1,
                   start_block=len(model.blocks), trainable=lambda n: n.startswith("ctc_head"),
                   state_path=state_dir / "stage1.pt")
    del hidden_top
    h2 = train_ctc(model, [Item(h, y, time_last=False) for h, y in zip(hidden_k, labels)], s2, start_block=k,
                   trainable=lambda n: n.startswith(("ctc_head", "ln_post"))
                   or any(n.startswith(f"blocks.{i}.") for i in range(k, len(model.blocks))),
                   state_path=state_dir / "stage2.pt")
    t_train = time.perf_counter() - t0 - t_data - t_cache

    model.eval()
    metrics = {}
    for name, manifest in (("real_test", REAL_TEST), ("synth_test", SYNTH_TEST)):
        res = evaluate(model, load_eval_set(manifest))
        metrics[name] = {"wer": round(res.wer, 4), "cer": round(res.cer, 4),
                         "utterances": res.utterances, "seconds": round(res.seconds, 2)}
    summary = {
        "model": "whisper_ctc (Whisper tiny.en encoder, OpenAI, MIT) + CTC character head",
        "data": {"synthetic_train_utterances": len(synth), "real_finetune_prompts": len(real),
                 "training_items": n_items, "corpus": corpus},
        "recipe": {"finetune_blocks": recipe.finetune_blocks, "real_copies": recipe.real_copies,
                   "stage1": asdict(s1), "stage2": asdict(s2), "seed": recipe.seed},
        "steps": {"stage1": len(h1), "stage2": len(h2)},
        "final_loss": {"stage1": h1[-1]["loss"] if h1 else None,
                       "stage2": h2[-1]["loss"] if h2 else None},
        "seconds": {"data": round(t_data, 1), "cache": round(t_cache, 1),
                    "train": round(t_train, 1), "total": round(time.perf_counter() - t0, 1)},
        "machine": f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}",
        "metrics": metrics,
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    save_checkpoint(model, out_dir / "model.safetensors", metadata={"metrics": metrics},
                    dtype=torch.float16)
    (out_dir / "config.json").write_text(json.dumps(model.describe(), indent=2) + "\n")
    (out_dir / "training.json").write_text(json.dumps(summary, indent=2) + "\n")
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    return summary


def _with_minutes(cfg: TrainConfig, minutes: float) -> TrainConfig:
    return TrainConfig(**{**asdict(cfg), "max_minutes": minutes})


def train_conformer(preset: str = "small", out_dir: Path | None = None, minutes: float | None = None,
                    seed: int = 0, corpus_dir: Path | None = None, n_train: int = 4000) -> dict:
    """Train a Conformer-CTC preset from scratch on log-mel features (with SpecAugment)."""
    from workbench.data import read_manifest  # looked up per call: tests monkeypatch it
    from workbench.evaluate import load_eval_set  # looked up per call: tests monkeypatch it
    from workbench.paths import REAL_TEST, SYNTH_TEST  # looked up per call: tests monkeypatch it

    torch.manual_seed(seed)
    corpus_dir = Path(corpus_dir or cache_dir() / "corpus")
    out_dir = Path(out_dir or cache_dir() / "models" / f"conformer_{preset}")
    build_all(corpus_dir, n_train=max(n_train, 4000), seed=seed)
    utts = read_manifest(corpus_dir / "synth" / "train.jsonl")[:n_train]
    utts += read_manifest(corpus_dir / "real" / "finetune.jsonl")
    feats, labels = _items(utts, 1, True, seed, "features")
    model = conformer_ctc(preset)
    cfg = TrainConfig(steps=4000, lr=2e-3, warmup=300, max_batch_frames=20_000, seed=seed,
                      max_minutes=minutes)
    hist = train_ctc(model, [Item(f, y) for f, y in zip(feats, labels)], cfg,
                     state_path=cache_dir() / "train_state" / f"conformer_{preset}_seed{seed}.pt")
    metrics = {name: asdict_metrics(evaluate(model, load_eval_set(m)))
               for name, m in (("real_test", REAL_TEST), ("synth_test", SYNTH_TEST))}
    out_dir.mkdir(parents=True, exist_ok=True)
    save_checkpoint(model, out_dir / "model.safetensors", metadata={"metrics": metrics})
    summary = {"preset": preset, "steps": len(hist), "final_loss": hist[-1]["loss"],
               "metrics": metrics, "checkpoint": str(out_dir / "model.safetensors")}
    (out_dir / "training.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def asdict_metrics(res) -> dict:
    return {"wer": round(res.wer, 4), "cer": round(res.cer, 4), "utterances": res.utterances}
