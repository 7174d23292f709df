"""ONNX export of the full Whisper model: encoder + KV-cached decoder, a greedy loop over ONNX
Runtime (the ORT-vs-simulation figures of `workbench bench whisper` are workbench.bench.whisper's).

Three graphs (batch 1, dynamic lengths), each weight stored in exactly one of them:
    encoder.onnx    mel (1, 80, T) -> enc (1, T', D)
    cross_kv.onnx   enc_full (1, S, D) -> cross_key_i / cross_value_i (1, Hc_i, S, Dh)
    decoder.onnx    tokens (1, L), past_key_i / past_value_i (1, H_i, P, Dh), cross_key_i /
                    cross_value_i -> logits (1, 1, V) of the last token,
                    present_key_i / present_value_i (1, H_i, P + L, Dh)       for each layer i
The prompt pass runs decoder.onnx with the prompt (L = 2) and an empty past (P = 0); each step
with one token. (Earlier versions had decoder_init + decoder_step graphs, which stored every
decoder weight twice.) Per-layer tensors (not one stacked tensor) so layers with pruned heads
export too. `enc_full` is the encoder output of the audio + 1 s silence followed by the
silence-tail encoding (the encoder graph run once on 30 s of digital silence), as in
`workbench.whisper_eval`.

Quantization per plan layer: `workbench.export.whisper_apply.build_whisper_export` (which also
lets the input embedding read the output projection's stored weight, so the tied table is stored
once).
"""
from __future__ import annotations

import copy
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from workbench.data import normalize_text
from workbench.export.errors import ExportError
from workbench.models.whisper_ctc import whisper_sinusoids

OPSET = 17
#: The graphs of a Whisper export, in run order.
GRAPHS = ("encoder", "cross_kv", "decoder")


class _Encoder(nn.Module):
    """mel -> encoder output. The sinusoidal position table (a non-persistent buffer: the model
    computes it, checkpoints and size() do not hold it) is computed in the graph for the run-time
    length, with the model's own formula (float64, rounded to fp16), instead of being stored as
    a 1500 x 384 fp32 constant (2.3 MB)."""

    def __init__(self, model) -> None:
        super().__init__()
        self.encoder = model.encoder

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        enc = self.encoder
        lengths = torch.full((1,), mel.shape[-1], dtype=torch.long)
        table = whisper_sinusoids((mel.shape[-1] - 1) // 2 + 1,
                                  enc.positional_embedding.shape[1])
        h, _ = enc.stem(mel, lengths, positions=table)   # the module's buffer is not touched
        for block in self.encoder.blocks:
            h = block(h, None)
        return self.encoder.ln_post(h)


class _CrossKV(nn.Module):
    """Encoder output -> every decoder block's cross-attention keys and values (once per audio)."""

    def __init__(self, model) -> None:
        super().__init__()
        self.decoder = model.decoder

    def forward(self, enc: torch.Tensor):
        out = []
        for block in self.decoder.blocks:
            out += list(block.cross_attn.keys_values(enc))
        return tuple(out)


class _Decoder(nn.Module):
    """L new tokens after P cached ones (P = 0 for the prompt) -> logits of the last token and
    the self-attention keys/values of all P + L tokens. One graph for the prompt pass and every
    step, so the decoder's weights are stored once."""

    def __init__(self, model) -> None:
        super().__init__()
        self.decoder = model.decoder
        self.n = len(model.decoder.blocks)

    def forward(self, tokens: torch.Tensor, *kv: torch.Tensor):
        n = self.n
        past, cross = kv[:2 * n], kv[2 * n:]
        cache = [(past[2 * i], past[2 * i + 1], cross[2 * i], cross[2 * i + 1], None, None)
                 for i in range(n)]
        logits, cache = self.decoder(tokens, cache)
        out = [logits]
        for c in cache:
            out += [c[0], c[1]]
        return tuple(out)


def _names(n: int, kind: str) -> list[str]:
    return [f"{kind}_{what}_{i}" for i in range(n) for what in ("key", "value")]


def export_whisper(model, out_dir: str | Path) -> dict[str, Path]:
    """Write encoder.onnx, cross_kv.onnx, decoder.onnx (fp32) to `out_dir`.

    The decoder is traced with 2 new tokens after 3 cached ones, so the causal mask (built from
    the run-time lengths) and the position offset are in the graph; with one new token the mask
    keeps everything, so the same graph serves the prompt pass (P = 0) and each step.
    A deep copy in eval mode is traced: `model` (whose modules a WhisperSession may share with
    running evaluations) is neither changed nor switched to eval mode."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model = copy.deepcopy(model).eval()
    n = len(model.decoder.blocks)
    d = model.decoder.config.d_model
    paths = {k: out_dir / f"{k}.onnx" for k in GRAPHS}
    mel = torch.randn(1, model.encoder.config.n_mels, 300)
    enc = torch.randn(1, 200, d)
    tokens = torch.tensor([list(model.rules.prompt)])
    with torch.no_grad():
        cross = list(_CrossKV(model)(enc))
        _, cache = model.decoder(torch.tensor([[0, 0, 0]]),
                                 model.decoder.init_cache(enc))
    past = [t for c in cache for t in c[:2]]
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(_Encoder(model), (mel,), str(paths["encoder"]), dynamo=False,
                              opset_version=OPSET, input_names=["mel"], output_names=["enc"],
                              dynamic_axes={"mel": {2: "frames"}, "enc": {1: "positions"}})
            torch.onnx.export(
                _CrossKV(model), (enc,), str(paths["cross_kv"]), dynamo=False,
                opset_version=OPSET, input_names=["enc"], output_names=_names(n, "cross"),
                dynamic_axes={"enc": {1: "positions"},
                              **{k: {2: "positions"} for k in _names(n, "cross")}})
            torch.onnx.export(
                _Decoder(model), (tokens, *past, *cross), str(paths["decoder"]),
                dynamo=False, opset_version=OPSET,
                input_names=["tokens", *_names(n, "past"), *_names(n, "cross")],
                output_names=["logits", *_names(n, "present")],
                dynamic_axes={"tokens": {1: "new"},
                              **{k: {2: "past"} for k in _names(n, "past")},
                              **{k: {2: "positions"} for k in _names(n, "cross")},
                              **{k: {2: "past_plus_new"} for k in _names(n, "present")}})
    except Exception as err:
        raise ExportError(f"Whisper ONNX export failed: {str(err).splitlines()[0][:300]}") from err
    return paths


class OrtWhisper:
    """Greedy decoding over the three ONNX Runtime sessions (same rules as whisper_eval)."""

    def __init__(self, paths: dict[str, Path], rules, n_layers: int, threads: int = 1) -> None:
        import onnxruntime as ort
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        self.sess = {k: ort.InferenceSession(str(p), opts, providers=["CPUExecutionProvider"])
                     for k, p in paths.items()}
        self.rules = rules
        self.n = n_layers
        self.step_seconds: list[float] = []
        self._tail = None
        self._empty: list[np.ndarray] | None = None

    def encode(self, mel: np.ndarray) -> np.ndarray:
        return self.sess["encoder"].run(None, {"mel": mel[None].astype(np.float32)})[0]

    def tail(self, n_mels: int = 80, frames: int = 3000) -> np.ndarray:
        if self._tail is None:
            from workbench.whisper_eval import SILENCE
            self._tail = self.encode(np.full((n_mels, frames), SILENCE, dtype=np.float32))
        return self._tail

    def prompt(self, enc_full: np.ndarray) -> tuple[np.ndarray, list, list]:
        """The prompt pass: cross keys/values of `enc_full` (1, S, D), then the decoder graph on
        the prompt tokens with an empty past -> (logits (1, 1, V), past, cross)."""
        n = self.n
        cross = self.sess["cross_kv"].run(None, {"enc": enc_full})
        feed = {"tokens": np.array([list(self.rules.prompt)], dtype=np.int64)}
        feed.update(dict(zip(_names(n, "past"), self._empty_past())))
        feed.update(dict(zip(_names(n, "cross"), cross)))
        outs = self.sess["decoder"].run(None, feed)
        return outs[0], outs[1:], cross

    def _empty_past(self) -> list[np.ndarray]:
        """(1, H_i, 0, Dh_i) per past input: heads and head size from the graph's input shapes
        (self- and cross-attention may have different pruned head counts)."""
        if self._empty is None:
            shapes = {i.name: i.shape for i in self.sess["decoder"].get_inputs()}
            self._empty = [np.zeros((1, shapes[k][1], 0, shapes[k][3]), np.float32)
                           for k in _names(self.n, "past")]
        return self._empty

    def transcribe_ids(self, mel: np.ndarray, budget: int) -> list[int]:
        from workbench.whisper_eval import MARGIN_FRAMES, suppress_mask, with_margin
        feats = with_margin(torch.from_numpy(mel), MARGIN_FRAMES).numpy()
        enc = self.encode(feats)
        tail = self.tail(feats.shape[0])
        enc_full = np.concatenate([enc, tail[:, enc.shape[1]:]], axis=1)
        r = self.rules
        n = self.n
        logits, past, cross = self.prompt(enc_full)
        always, first = (m.numpy() for m in suppress_mask(r, logits.shape[-1]))
        ids: list[int] = []
        step = 0
        while True:
            lg = logits[0, -1].copy()
            lg[first if step == 0 else always] = -np.inf
            t = int(lg.argmax())
            if t == r.eot or len(ids) >= budget:
                break
            ids.append(t)
            if len(ids) >= budget:
                break
            feed = {"tokens": np.array([[t]], dtype=np.int64)}
            feed.update(dict(zip(_names(n, "past"), past)))
            feed.update(dict(zip(_names(n, "cross"), cross)))
            t0 = time.perf_counter()
            outs = self.sess["decoder"].run(None, feed)
            self.step_seconds.append(time.perf_counter() - t0)
            logits, past = outs[0], outs[1:]
            step += 1
        return ids


def ort_transcribe(ort_model: OrtWhisper, tokenizer, features, seconds) -> list[str]:
    from workbench.whisper_eval import max_new_tokens
    return [normalize_text(tokenizer.decode(ort_model.transcribe_ids(f.numpy(),
                                                                     max_new_tokens(s))))
            for f, s in zip(features, seconds)]
