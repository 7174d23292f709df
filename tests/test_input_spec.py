"""What a model's `features` input is, from one place (review 7, finding 12): log-mel channels at
100 frames/s, or a 16 kHz waveform for a model adapted with features="waveform". Before, several
places assumed log-mel at 100/s: a bundle measured a wav2vec2's memory on 1/160 of its audio and
a window in seconds found 1/160 of its frame rate."""
from __future__ import annotations

import pytest
import torch

from toys import torchaudio_wav2vec2
from workbench.byo import adapt
from workbench.compress.techniques._swap import frames_per_second
from workbench.errors import WorkbenchError
from workbench.models import VOCAB, InputSpec, build_model, example_input, input_spec

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def wav2vec2():
    return adapt(torchaudio_wav2vec2(aux_num_out=len(VOCAB)))


def test_input_spec_of_each_kind_of_model(wav2vec2) -> None:
    whisper = build_model("whisper_ctc", d_model=32, n_heads=4, n_layers=1, d_ff=64, n_ctx=1500)
    assert input_spec(whisper) == InputSpec("log_mel", 80, 100)
    assert input_spec(wav2vec2) == InputSpec("waveform", 1, 16_000)
    x, lengths = example_input(wav2vec2, 1.0)
    assert x.shape == (1, 1, 16_000) and lengths.tolist() == [16_000]
    x, lengths = example_input(whisper, 2.5, seed=None)
    assert x.shape == (1, 80, 250) and not x.any() and lengths.tolist() == [250]
    with pytest.raises(WorkbenchError, match="Linear: not a workbench CTC model"):
        input_spec(torch.nn.Linear(2, 2))


def test_frame_rate_at_the_blocks_of_a_waveform_model(wav2vec2) -> None:
    # the toy's feature extractor: convs of stride 5, 2, 2, 2, 2 -> one frame per 80 samples
    assert frames_per_second(wav2vec2) == 200.0
    whisper = build_model("whisper_ctc", d_model=32, n_heads=4, n_layers=1, d_ff=64, n_ctx=1500)
    assert frames_per_second(whisper) == 50.0


def test_a_waveform_bundle_measures_and_prices_one_second_of_samples(wav2vec2, tmp_path) -> None:
    from workbench.deploy.bundle import Budget, build_bundle
    from workbench.export import ApplyOptions
    from workbench.paths import REAL_TEST
    from workbench.data import read_manifest, write_manifest
    from workbench.plan import CompressionPlan, LayerConfig, QuantConfig
    # The two shortest real_test utterances (~1 s each): the toy makes 200 frames per second
    # and attends over all of them, so the first two (~5 s each) cost more for the same
    # properties (nothing here depends on which utterances are decoded).
    shortest = sorted(read_manifest(REAL_TEST), key=lambda u: u.duration)[:2]
    eval_set = write_manifest(shortest, tmp_path / "short" / "manifest.jsonl")
    options = ApplyOptions(eval_manifests=(eval_set,), eval_limit=2, parity_utterances=1,
                           latency_repeats=2, threads=(1,), simulate_devices=False)
    int8 = CompressionPlan().with_default(LayerConfig(quant=QuantConfig(weight_bits=8)))
    manifest = build_bundle(wav2vec2, tmp_path / "b", Budget(memory_mb=1000, latency_ms=1e5,
                                                             device="rpi5", seconds=1.0),
                            CompressionPlan(), int8, options=options, log=lambda m: None)
    assert manifest["input"]["n_mels"] == 1 and manifest["input"]["warmup_frames"] == 16_000
    assert manifest["input"]["kind"] == "waveform"
    for variant in manifest["variants"]:
        assert "features (1, 1, 16000)" in variant["memory_source"]
        assert variant["memory_bytes"] > 0 and variant["simulated"]["latency_ms"] > 0
