"""Streaming figures: WER vs chunk size, first-partial latency and real-time factor per device.

    rows = streaming_table(model, eval_set, chunks_s=(0.5, 1, 2, 4, None))

WER is measured (greedy CTC on the chunked simulation, jiwer). Per-chunk compute on a device is
simulated with the latency model's public API: `predict_latency` of the model at three lengths
gives time(n) = a + b n + c n^2 over n encoder frames (the n^2 term is attention); one step with
q = chunk + look-ahead queries and k = left + q keys then costs a + b q + c q k.

One step also runs what the full-context model never does: the K/V cache bookkeeping (split
the stacked cache per block, concatenate cache and chunk keys, slice and re-stack the new cache)
and the masks for the step's offset: 7 ONNX nodes per block + 37 (STEP_NODES_*), each paying
the device's per-op overhead, and the cache state itself crossing memory once in and once out,
priced at the device's bandwidth x memory efficiency. The per-block copies in between are not
priced by the byte: a block's K/V (L x heads x head_dim fp32, 307 KB on the demo at 4 s) stays
in the core's cache (L2 1 MB per core on this host). Check: in an ONNX Runtime profile of the
demo's step (chunk 1 s, left 4 s) the Split / Slice / Concat / (Un)Squeeze nodes took 6.6 % of
kernel time, ~0.95 ms of a 14.3 ms step; this prices them at 0.69 ms (nominal host profile).
Without these terms the host prediction was 15-26 % under the measured step in earlier runs.

    first-partial latency = chunk + look-ahead + 20 ms (stem) + compute of one step
    real-time factor      = compute of one step / chunk duration
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch
from tqdm import tqdm

from workbench.decode import greedy_decode
from workbench.evaluate import batches, score, transcribe
from workbench.features import collate_features
from workbench.latency import known_devices, load_device, predict_latency
from workbench.latency import predict as edge
from workbench.streaming.step import (FRAMES_PER_SECOND, HEAD_CACHE, StreamConfig,
                                      StreamingStep, stream_logits)

#: Lengths (encoder frames) at which the latency model is priced to fit a + b n + c n^2.
FIT_FRAMES = (50, 150, 300)


def device_name(prefix: str) -> str:
    """The latency model's device whose name starts with `prefix` ('rpi4' -> 'rpi4' or
    'rpi4_a72', whichever the installed device files call it)."""
    names = sorted(known_devices())
    for name in names:
        if name == prefix:
            return name
    for name in names:
        if name.startswith(prefix):
            return name
    from workbench.streaming.step import StreamingError
    raise StreamingError(f"device {prefix!r}: not among the latency model's devices {names}")


#: ONNX nodes a step runs beyond the full-context model's, counted in the ONNX Runtime-optimized
#: graphs (ORT_ENABLE_ALL): demo (4 blocks, chunk 1 s, left 4 s) 265 step vs 200 full-model
#: nodes; 2- and 3-block test models 173 vs 122 and 219 vs 161 (any chunk / left): 7 per block
#: (net: cache Slices and Concats, Squeeze / Unsqueeze, Reshapes around the Gemms the step's
#: static shapes allow, minus the MatMul + Add pairs and BiasGelus those replace) and 37 fixed
#: (masks for the step's offset, cache Split, head-cache Concat and Slices).
#: tests/test_streaming.py recounts them.
STEP_NODES_PER_BLOCK = 7
STEP_NODES_FIXED = 37


@dataclass(frozen=True)
class StepCost:
    """Simulated time of one streaming step on a device (ms, with the device's error band).

    step_ms = a + b q + c q k (the model's compute, fitted to the latency model) + the cache
    bookkeeping: copy_elems(...) fp32 elements at elem_ms each + nodes at node_ms each."""

    device: str
    a_ms: float
    b_ms: float      # per query frame
    c_ms: float      # per query x key frame
    band_pct: float
    elem_ms: float = 0.0     # one fp32 element read or written by a copy
    node_ms: float = 0.0     # overhead of one runtime node
    blocks: int = 0          # cache geometry of the model (0: no cache priced)
    kv_width: int = 0        # heads x head_dim of the cache (the widest block: the step pads)
    head_width: int = 0      # CTC head channels (its 4-frame cache)

    def compute_ms(self, queries: int, keys: int) -> float:
        return self.a_ms + self.b_ms * queries + self.c_ms * queries * keys

    def copy_elems(self, queries: int, keys: int) -> int:
        """fp32 elements of cache state one step reads from and writes to memory: K and V of the
        L = keys - queries cached frames in every block, in and out (4 L kv_width per block),
        and the CTC head's 4-frame cache in and out. Look-ahead frames are recomputed, not
        cached: they are in `queries`, not in the state."""
        left = max(0, keys - queries)
        return 4 * self.blocks * self.kv_width * left + 2 * HEAD_CACHE * self.head_width

    def cache_ms(self, queries: int, keys: int) -> float:
        if not self.blocks:
            return 0.0
        nodes = STEP_NODES_PER_BLOCK * self.blocks + STEP_NODES_FIXED
        return self.copy_elems(queries, keys) * self.elem_ms + nodes * self.node_ms

    def step_ms(self, queries: int, keys: int) -> float:
        """One step with `queries` = chunk + look-ahead frames and `keys` = left + queries."""
        return self.compute_ms(queries, keys) + self.cache_ms(queries, keys)

    def full_ms(self, frames: int) -> float:
        """The whole utterance at once: no cache."""
        return self.compute_ms(frames, frames)


def copy_prices(device: str) -> tuple[float, float]:
    """(ms per fp32 element moved, ms per runtime node) of a memory-bound copy on `device`:
    the latency model's own bandwidth x memory efficiency and per-op overhead (host profile,
    calibrated if `workbench calibrate` ran; edge devices: device file x default runtime)."""
    if edge.is_edge(device):
        dev, rt, _ = edge.resolve_target(device, None, None)
        bandwidth = dev.memory_bandwidth_gbs * 1e9 * rt.params["memory_efficiency"]
        return 4 / bandwidth * 1e3, rt.params["overhead_cycles"] / (dev.clock_mhz * 1e6) * 1e3
    prof = load_device(device)
    bandwidth = prof.memory_bandwidth_gbs * 1e9 * prof.efficiency.memory
    return 4 / bandwidth * 1e3, prof.overhead_us_per_op * 1e-3


def step_cost(model, device: str, plan=None) -> StepCost:
    """Fit a + b n + c n^2 to the latency model's prediction at FIT_FRAMES lengths; price the
    cache bookkeeping with the device's copy prices (copy_prices)."""
    kw = {"weight_bits": plan} if plan is not None else {}
    ys, band = [], 0.0
    for n in FIT_FRAMES:
        rep = predict_latency(model, device, audio_seconds=n / FRAMES_PER_SECOND, **kw)
        ys.append(rep.total_ms)
        band = rep.error_band_pct
    x = torch.tensor([[1.0, n, n * n] for n in FIT_FRAMES], dtype=torch.float64)
    a, b, c = torch.linalg.solve(x, torch.tensor(ys, dtype=torch.float64)).tolist()
    elem_ms, node_ms = copy_prices(device)
    blocks = getattr(model, "blocks", ())
    kv_width = max((blk.attn.n_heads * blk.attn.head_dim for blk in blocks), default=0)
    head = getattr(getattr(model, "ctc_head", None), "proj_in", None)
    return StepCost(device, a, b, max(c, 0.0), band, elem_ms, node_ms, len(blocks), kv_width,
                    head.out_features if head is not None else 0)


def cache_bytes(model, cfg: StreamConfig) -> int:
    """fp32 bytes of the state carried between steps: K/V of the left context in every block,
    the CTC head's 4 frames and the 2 overlapping mel frames."""
    blocks = model.blocks
    kv = sum(2 * cfg.left * b.attn.n_heads * b.attn.head_dim for b in blocks)
    head = 4 * model.ctc_head.proj_in.out_features
    return 4 * (kv + head + 2 * model.config.n_mels)


@torch.inference_mode()
def chunked_transcripts(model, eval_set, cfg: StreamConfig | None, max_frames: int = 12_000
                        ) -> list[str]:
    """Greedy transcripts of every utterance: chunked (cfg) or full context (cfg None)."""
    if cfg is None:
        return transcribe(model, eval_set.features, max_frames)
    step = StreamingStep(model, cfg).eval()
    feats = eval_set.features
    hyps = [""] * len(feats)
    for idx in batches([f.shape[-1] for f in feats], max_frames):
        x, lens = collate_features([feats[i] for i in idx])
        logits, t_len = stream_logits(step, x, lens)
        for i, text in zip(idx, greedy_decode(logits.log_softmax(-1), t_len)):
            hyps[i] = text
    return hyps


@dataclass(frozen=True)
class StreamingRow:
    chunk_s: float | None          # None: full context (the whole utterance at once)
    lookahead_s: float
    left_s: float
    wer: float
    cer: float
    cache_bytes: int
    algorithmic_ms: float          # audio that must arrive before the first partial
    compute_ms: dict               # device -> simulated ms of one step (full: one utterance)
    first_partial_ms: dict         # device -> algorithmic + compute
    rtf: dict                      # device -> compute / chunk (full: / utterance)
    band_pct: dict                 # device -> +- % of the latency model


def streaming_table(model, eval_set, chunks_s: Sequence[float | None] = (0.5, 1.0, 2.0, 4.0, None),
                    lookahead_s: float = 0.0, left_s: float = 4.0,
                    devices: Sequence[str] = ("rpi4", "rpi5"), plan=None,
                    progress: bool = True) -> list[StreamingRow]:
    """WER (measured, chunked simulation) and latency (simulated) per chunk size and device."""
    names = [device_name(d) for d in devices]
    costs = {d: step_cost(model, d, plan) for d in names}
    mean_frames = round(sum(f.shape[-1] for f in eval_set.features) / len(eval_set) / 2)
    rows = []
    for chunk in tqdm(list(chunks_s), desc="streaming: chunk sizes", disable=not progress,
                      leave=False):
        cfg = None if chunk is None else StreamConfig.from_seconds(chunk, lookahead_s, left_s)
        hyps = chunked_transcripts(model, eval_set, cfg)
        wer, cer, _ = score(eval_set.texts, hyps)
        if cfg is None:
            algo = 1e3 * mean_frames / FRAMES_PER_SECOND
            compute = {d: c.full_ms(mean_frames) for d, c in costs.items()}
            rtf = {d: ms / algo for d, ms in compute.items()}
            mem = 0
        else:
            algo = 1e3 * cfg.algorithmic_latency_s
            q = cfg.chunk + cfg.lookahead
            compute = {d: c.step_ms(q, cfg.left + q) for d, c in costs.items()}
            rtf = {d: ms / (1e3 * cfg.chunk_s) for d, ms in compute.items()}
            mem = cache_bytes(model, cfg)
        rows.append(StreamingRow(chunk, lookahead_s, left_s, wer, cer, mem, algo, compute,
                                 {d: algo + ms for d, ms in compute.items()}, rtf,
                                 {d: c.band_pct for d, c in costs.items()}))
    return rows


def rows_to_dicts(rows: Sequence[StreamingRow]) -> list[dict]:
    out = []
    for r in rows:
        d = asdict(r)
        for key in ("compute_ms", "first_partial_ms", "rtf"):
            d[key] = {k: round(v, 4 if key == "rtf" else 1) for k, v in d[key].items()}
        d["wer"], d["cer"] = round(r.wer, 4), round(r.cer, 4)
        d["chunk"] = "full context" if r.chunk_s is None else f"{r.chunk_s:g} s"
        out.append(d)
    return out
