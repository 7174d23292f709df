"""Training decreases the CTC loss; the shipped demo model transcribes real held-out speech."""
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
