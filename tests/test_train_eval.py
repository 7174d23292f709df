"""Training decreases the CTC loss; the shipped demo model transcribes real held-out speech."""
import pytest
import torch

from workbench.decode import encode_text
from workbench.train import Item, TrainConfig, train_ctc


def test_short_training_run_on_tiny_preset_decreases_loss():
    from workbench.models import conformer_ctc
    torch.manual_seed(0)
    model = conformer_ctc("tiny")
    g = torch.Generator().manual_seed(0)
    # A learnable toy task: each "word" is a fixed random spectrogram pattern.
    patterns = {w: torch.randn(80, 24, generator=g) for w in ("yes", "no", "stop", "go")}
    items = []
    for i in range(32):
        words = [list(patterns)[(i + k) % 4] for k in range(2)]
        x = torch.cat([patterns[w] + 0.1 * torch.randn(80, 24, generator=g) for w in words], -1)
        items.append(Item(x, torch.tensor(encode_text(" ".join(words)))))
    cfg = TrainConfig(steps=60, lr=3e-3, warmup=5, max_batch_frames=800, spec_augment=False,
                      checkpoint_every=0, seed=0)
    hist = train_ctc(model, items, cfg, progress=False)
    first = sum(h["loss"] for h in hist[:5]) / 5
    last = sum(h["loss"] for h in hist[-5:]) / 5
    assert last < 0.7 * first, (first, last)


def test_training_is_resumable_and_reproducible(tmp_path):
    from workbench.models import conformer_ctc
    g = torch.Generator().manual_seed(1)
    items = [Item(torch.randn(80, 40, generator=g), torch.tensor(encode_text("hi there")))
             for _ in range(8)]
    cfg = TrainConfig(steps=6, warmup=2, max_batch_frames=400, spec_augment=False,
                      checkpoint_every=3, seed=0)
    torch.manual_seed(0)
    a = conformer_ctc("tiny")
    ha = train_ctc(a, items, cfg, progress=False)
    torch.manual_seed(0)
    b = conformer_ctc("tiny")
    hb = train_ctc(b, items, cfg, progress=False)
    assert [h["loss"] for h in ha] == [h["loss"] for h in hb]  # seeded: identical runs
    state = tmp_path / "state.pt"
    torch.manual_seed(0)
    c = conformer_ctc("tiny")
    train_ctc(c, items, cfg, state_path=state, progress=False)
    torch.manual_seed(1)  # a different init: everything must come from the state file
    d = conformer_ctc("tiny")
    hd = train_ctc(d, items, cfg, state_path=state, progress=False)  # resumes at the end: no steps
    assert len(hd) == cfg.steps and all(torch.equal(p, q) for p, q in
                                        zip(c.state_dict().values(), d.state_dict().values()))


def test_shipped_demo_transcribes_real_held_out_speech():
    from workbench import REAL_TEST, evaluate, load_demo, load_eval_set
    eval_set = load_eval_set(REAL_TEST, limit=20, progress=False)
    result = evaluate(load_demo(), eval_set)
    # The full set measures 0.31 greedy (README); 20 utterances leave room for sampling noise.
    assert result.wer < 0.45 and result.cer < 0.15, (result.wer, result.cer)


def test_timed_run_warms_up_over_real_steps_not_over_time():
    """With a wall-clock budget the cosine decay follows the time spent, but the warm-up counts
    optimizer steps: a loaded run that has taken 3 steps in a third of its budget gets 3/30 of
    the peak lr, not the ~0.8 of it a time-based warm-up gave (which left a barely warmed-up
    optimizer at full lr). Past the warm-up, and without a budget, the schedule is unchanged."""
    from workbench.compress.distill import RecoverConfig
    from workbench.train import _schedule_step, lr_at, scheduled_lr

    cfg = RecoverConfig(steps=400, lr=5e-4, warmup=30, max_minutes=10.0)
    third = 200.0                                             # seconds: a third of 10 min
    old = lr_at(_schedule_step(2, cfg, third), cfg)           # what the loop used before
    assert old > 0.8 * cfg.lr
    assert scheduled_lr(2, cfg, third) == pytest.approx(cfg.lr * 3 / 30, rel=1e-9)
    assert scheduled_lr(2, cfg, 0.0) == pytest.approx(cfg.lr * 3 / 30, rel=1e-9)
    assert scheduled_lr(100, cfg, third) == pytest.approx(lr_at(_schedule_step(100, cfg, third), cfg))
    assert scheduled_lr(599, cfg, 600.0) == pytest.approx(0.0, abs=1e-12)   # budget spent
    untimed = RecoverConfig(steps=400, lr=5e-4, warmup=30)
    assert [scheduled_lr(s, untimed, 1e9) for s in (0, 29, 30, 399)] == [
        lr_at(s, untimed) for s in (0, 29, 30, 399)]
