"""export_whisper leaves the caller's model alone (review 7, finding 18): it traced the model
itself, switching it to eval mode and swapping its encoder's position buffer during tracing
(visible to a WhisperSession evaluating on the same shared modules)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from toys import tiny_whisper_asr

torch.set_num_threads(1)
pytest.importorskip("onnxruntime")


def test_export_whisper_does_not_touch_the_callers_model(tmp_path) -> None:
    from workbench.export.whisper_onnx import OrtWhisper, export_whisper
    model = tiny_whisper_asr().train()
    table = model.encoder.positional_embedding
    before = {k: v.clone() for k, v in model.state_dict().items()}
    paths = export_whisper(model, tmp_path)
    assert all(m.training for m in model.modules())               # still in training mode
    assert model.encoder.positional_embedding is table
    assert "stem" not in vars(model.encoder)                      # nothing patched on it
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    # and the exported encoder computes what the model (in eval mode) computes
    mel = torch.randn(1, 80, 90, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ref, _ = model.eval().encoder.encode(mel)
    got = OrtWhisper(paths, model.rules, len(model.decoder.blocks)).encode(mel[0].numpy())
    assert np.abs(np.asarray(got).reshape(ref.shape) - ref.numpy()).max() < 1e-4


def test_stem_adds_a_given_position_table_instead_of_the_buffer() -> None:
    model = tiny_whisper_asr().eval()
    mel = torch.randn(1, 80, 40)
    lengths = torch.tensor([40])
    with torch.no_grad():
        h, _ = model.encoder.stem(mel, lengths)
        zero, _ = model.encoder.stem(mel, lengths, positions=torch.zeros(20, 32))
    torch.testing.assert_close(h - zero, model.encoder.positional_embedding[:20].expand(1, -1, -1))
