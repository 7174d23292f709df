"""wav2vec2 read from a local Hugging Face folder (config.json + model.safetensors [+ vocab.json]).

The folders are written here from torchaudio models (workbench.byo.hf_wav2vec2.write_wav2vec2_hf,
names as transformers' Wav2Vec2ForCTC saves them, weight norm as weight_g / weight_v); nothing is
downloaded. The model read back must compute exactly what the written one computes."""
import json
from pathlib import Path

import pytest
import torch

from toys import torchaudio_wav2vec2
from workbench import compress
from workbench.byo import adapt
from workbench.byo.hf_wav2vec2 import load_wav2vec2_hf, write_wav2vec2_hf
from workbench.errors import CheckpointError
from workbench.models import VOCAB
from workbench.plan import CompressionPlan, LayerConfig, PruneConfig

#: facebook/wav2vec2-base-960h's vocab.json (32 symbols, letters by frequency).
HF_VOCAB = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3, "|": 4,
            **{c: 5 + i for i, c in enumerate("ETAONIHSRDLUMWCFGYPBVK'XJQZ")}}


@pytest.fixture(scope="module")
def raw():
    return torchaudio_wav2vec2(aux_num_out=len(HF_VOCAB))


@pytest.fixture()
def folder(raw, tmp_path):
    return write_wav2vec2_hf(raw, tmp_path / "w2v", HF_VOCAB)


@pytest.fixture(scope="module")
def adapted(raw, tmp_path_factory):
    """adapt() of the folder's model, once for the module: its graph discovery on the waveform
    model was most of this file's time, and two tests adapted the same folder."""
    return adapt(load_wav2vec2_hf(write_wav2vec2_hf(raw, tmp_path_factory.mktemp("w2v") / "w2v",
                                                    HF_VOCAB)))


def _rows() -> list[int]:
    hf = {"<blank>": "<pad>", " ": "|", "'": "'"}
    return [HF_VOCAB[hf.get(s, s.upper())] for s in VOCAB]


def test_folder_reads_back_exactly_with_the_head_in_vocab_order(raw, folder, adapted):
    names = set(__import__("safetensors.torch", fromlist=["load_file"]).load_file(
        folder / "model.safetensors"))
    assert "wav2vec2.encoder.pos_conv_embed.conv.weight_g" in names   # the hub's spelling
    assert "lm_head.weight" in names and "wav2vec2.encoder.layers.1.attention.q_proj.weight" in names
    model = load_wav2vec2_hf(folder)
    wave = torch.randn(2, 3200, generator=torch.Generator().manual_seed(0))
    lengths = torch.tensor([3200, 2400])
    with torch.no_grad():
        ref, ref_len = raw(wave, lengths)
        got, got_len = model(wave, lengths)
    assert torch.equal(got_len, ref_len)
    assert torch.equal(got, ref[..., _rows()])   # the VOCAB rows of lm_head, nothing else
    assert not adapted.config.untrained           # the head is reused as the CTC head


def test_without_vocab_json_the_head_stays_and_adapt_says_untrained(raw, tmp_path):
    folder = write_wav2vec2_hf(raw, tmp_path / "novocab")
    model = load_wav2vec2_hf(folder)
    assert model.aux.out_features == len(HF_VOCAB)
    assert adapt(model).config.untrained


def test_layer_norm_extractor_and_stable_layer_norm_round_trip(tmp_path):
    from torchaudio.models import wav2vec2_model
    torch.manual_seed(0)
    raw = wav2vec2_model(
        extractor_mode="layer_norm", extractor_conv_layer_config=[(32, 10, 5), (32, 3, 2)],
        extractor_conv_bias=True, encoder_embed_dim=64, encoder_projection_dropout=0.0,
        encoder_pos_conv_kernel=8, encoder_pos_conv_groups=4, encoder_num_layers=1,
        encoder_num_heads=2, encoder_attention_dropout=0.0, encoder_ff_interm_features=96,
        encoder_ff_interm_dropout=0.0, encoder_dropout=0.0, encoder_layer_norm_first=True,
        encoder_layer_drop=0.0, aux_num_out=None).eval()
    folder = write_wav2vec2_hf(raw, tmp_path / "large")
    cfg = json.loads((folder / "config.json").read_text())
    assert cfg["do_stable_layer_norm"] is True and cfg["feat_extract_norm"] == "layer"
    model = load_wav2vec2_hf(folder)
    wave = torch.randn(1, 2000, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(model(wave)[0], raw(wave)[0])


def test_parametrization_names_are_read_too(raw, folder):
    from safetensors.torch import load_file, save_file
    tensors = load_file(folder / "model.safetensors")
    for old, new in (("weight_g", "parametrizations.weight.original0"),
                     ("weight_v", "parametrizations.weight.original1")):
        tensors[f"wav2vec2.encoder.pos_conv_embed.conv.{new}"] = tensors.pop(
            f"wav2vec2.encoder.pos_conv_embed.conv.{old}")
    save_file(tensors, str(folder / "model.safetensors"))
    wave = torch.randn(1, 3200, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(load_wav2vec2_hf(folder)(wave)[0], raw(wave)[0][..., _rows()])


def test_one_plan_prunes_the_hf_model_exactly(adapted):
    model = adapted
    prune = lambda s, a: LayerConfig(prune=PruneConfig(structure=s, amount=a))  # noqa: E731
    plan = (CompressionPlan().with_group("ffn", prune("neurons", 0.5))
            .with_group("attention", prune("heads", 0.25)))
    pruned = compress(model, plan)
    d, dh, layers = 128, 32, 2                          # 4 heads of 32; FFN 256 -> 128
    per_layer = 128 * (d + 1) + 128 * d + 3 * dh * (d + 1) + dh * d
    assert sum(p.numel() for p in pruned.parameters()) == (
        sum(p.numel() for p in model.parameters()) - layers * per_layer)


def _edit_config(folder: Path, **changes) -> None:
    cfg = json.loads((folder / "config.json").read_text())
    for k, v in changes.items():
        if v is None:
            cfg.pop(k)
        else:
            cfg[k] = v
    (folder / "config.json").write_text(json.dumps(cfg))


def test_missing_files_are_refused(folder, tmp_path):
    with pytest.raises(CheckpointError, match="no config.json"):
        load_wav2vec2_hf(tmp_path)
    (folder / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="no model.safetensors"):
        load_wav2vec2_hf(folder)


def test_other_model_type_is_refused(folder):
    _edit_config(folder, model_type="hubert")
    with pytest.raises(CheckpointError, match="model_type 'hubert'"):
        load_wav2vec2_hf(folder)


def test_missing_config_key_is_refused(folder):
    _edit_config(folder, num_hidden_layers=None)
    with pytest.raises(CheckpointError, match="missing num_hidden_layers"):
        load_wav2vec2_hf(folder)


def test_other_activation_is_refused(folder):
    _edit_config(folder, hidden_act="relu")
    with pytest.raises(CheckpointError, match="hidden_act='relu'"):
        load_wav2vec2_hf(folder)


def test_config_that_does_not_match_the_weights_is_refused(folder):
    _edit_config(folder, num_hidden_layers=3)
    with pytest.raises(CheckpointError, match="missing.*layers.2"):
        load_wav2vec2_hf(folder)
    _edit_config(folder, num_hidden_layers=2, intermediate_size=512)
    with pytest.raises(CheckpointError, match="shapes do not match.*intermediate_dense"):
        load_wav2vec2_hf(folder)


def test_foreign_tensor_and_broken_file_are_refused(folder):
    from safetensors.torch import load_file, save_file
    tensors = load_file(folder / "model.safetensors")
    save_file({**tensors, "bert.pooler.weight": torch.zeros(2)},
              str(folder / "model.safetensors"))
    with pytest.raises(CheckpointError, match="'bert.pooler.weight'"):
        load_wav2vec2_hf(folder)
    (folder / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match="not a readable safetensors"):
        load_wav2vec2_hf(folder)
