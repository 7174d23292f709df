"""Reference solutions of the lessons' implement-it-yourself cells.

Each function here is what a learner writes in a lesson; `workbench.lessons.checks` compares a
learner's function with these. Where the workbench already implements the idea, the solution *is*
the workbench's own code (so a check also tells the learner they reproduced the tool they use):

    magnitude_mask     compress.prune.count_to_remove (round-half-up count, lowest |w| first)
    prune_ffn          compress.prune.shrink_outputs_ / shrink_inputs_ (fc1 rows, fc2 columns)
    linear_quantize    compress.quantize.fake_quant_weight (per tensor / per channel grids)
    sqnr_db            compress.quantize.sqnr_db
    truncated_svd      compress.lowrank.svd (float64 thin SVD)
    int8_bytes         size.storage_bytes (weight + scale + zero point fields)

roofline_ms writes out the per-op formula of latency.cost.layer_latency (max(compute, memory) +
overhead) over plain numbers: that function takes a table row and a device profile. The others
(WER by edit distance, k-means palettization, an integer GEMM, MACs of one block, noise at a
given SNR) are written out, each with its source; whisper_ms is the total of
whisper_latency.price_whisper (encoder + cross K/V + steps x one decoder step).
Lesson 09's windowed_scores_macs is the latency row of compress.techniques.windowed_attention;
local_attention (with a (T, T) mask) and linear_attention compute what the swap layers
WindowedSelfAttention (block by block) and LinearSelfAttention do (tests/test_lessons_checks.py
compares them).
Pure: no widgets, nothing mutated.
Shapes: a Linear weight is (out, in); activations are (rows, features).
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from workbench.compress.lowrank import singular_values, svd
from workbench.compress.prune import count_to_remove, shrink_inputs_, shrink_outputs_
from workbench.compress.quantize import fake_quant_weight
from workbench.compress.quantize import sqnr_db as _sqnr
from workbench.size import WeightSpec, storage_bytes


# ---- lesson 00: word error rate ------------------------------------------------------------------

def edit_distance(ref: list[str], hyp: list[str]) -> int:
    """Levenshtein distance between two token lists (substitutions + deletions + insertions)."""
    prev = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        cur = [i] + [0] * len(hyp)
        for j, h in enumerate(hyp, 1):
            cur[j] = min(prev[j] + 1,            # deletion (ref word missing from hyp)
                         cur[j - 1] + 1,         # insertion (extra hyp word)
                         prev[j - 1] + (r != h))  # substitution or match
        prev = cur
    return prev[-1]


def wer(reference: str, hypothesis: str) -> float:
    """Word error rate = (S + D + I) / N, N = words in the reference. Insertions have no upper
    bound, so WER can exceed 1 (a hypothesis longer than the reference, all wrong)."""
    ref, hyp = reference.split(), hypothesis.split()
    if not ref:
        raise ValueError("wer: the reference has no words (N = 0)")
    return edit_distance(ref, hyp) / len(ref)


# ---- lesson 01: where the MACs of one transformer block go -----------------------------------------

def block_macs(frames: int, d_model: int, d_ff: int) -> dict[str, int]:
    """Multiply-accumulates of one pre-norm transformer encoder block on `frames` positions.

    projections: q, k, v, out, each (T, d) x (d, d)            -> 4 T d^2
    scores:      Q K^T (T, d) x (d, T) and A V (T, T) x (T, d)  -> 2 T^2 d (all heads together)
    ffn:         fc1 (T, d) x (d, d_ff) and fc2 (T, d_ff) x (d_ff, d) -> 2 T d d_ff
    """
    t, d = frames, d_model
    return {"projections": 4 * t * d * d, "scores": 2 * t * t * d, "ffn": 2 * t * d * d_ff}


def crossover_frames(d_model: int, d_ff: int) -> int:
    """Smallest T where the attention scores cost more MACs than the FFN: 2 T^2 d > 2 T d d_ff
    <=> T > d_ff (independent of d_model)."""
    del d_model   # cancels out; kept in the signature so the learner sees it does
    return d_ff + 1


# ---- lesson 02a: pruning masks and structures ------------------------------------------------------

def magnitude_mask(weight: torch.Tensor, amount: float) -> torch.Tensor:
    """Bool mask (weight's shape), False for the round(amount * numel) smallest |w| (ties: the
    earlier index goes first), as `compress` prunes unstructured."""
    flat = weight.detach().abs().flatten().double()
    drop = torch.argsort(flat, stable=True)[: count_to_remove(flat.numel(), amount,
                                                               keep_one=False)]
    mask = torch.ones(flat.numel(), dtype=torch.bool)
    mask[drop] = False
    return mask.reshape(weight.shape)


def nm_mask(weight: torch.Tensor, n: int = 2, m: int = 4) -> torch.Tensor:
    """Bool mask keeping the n largest |w| of every m consecutive weights along the input
    dimension (N:M semi-structured sparsity, e.g. 2:4: the pattern NVIDIA Ampere sparse tensor
    cores run at twice the dense rate; Mishra et al. 2021, arXiv:2104.08378). in % m == 0."""
    out, k = weight.shape
    groups = weight.detach().abs().reshape(out, k // m, m)
    top = torch.topk(groups, n, dim=2).indices
    mask = torch.zeros_like(groups, dtype=torch.bool).scatter_(2, top, True)
    return mask.reshape(out, k)


def prune_ffn(fc1: nn.Linear, fc2: nn.Linear, keep: torch.Tensor) -> tuple[nn.Linear, nn.Linear]:
    """New (fc1, fc2) keeping hidden neurons `keep`: rows of fc1 (+ bias), columns of fc2.
    fc1: (d_ff, d) -> (k, d); fc2: (d, d_ff) -> (d, k). The inputs are not changed."""
    keep = torch.as_tensor(keep, dtype=torch.long)
    new1, new2 = copy.deepcopy(fc1), copy.deepcopy(fc2)
    shrink_outputs_(new1, keep)
    shrink_inputs_(new2, keep)
    return new1, new2


def neuron_scores(fc1: nn.Linear, fc2: nn.Linear) -> torch.Tensor:
    """(d_ff,) magnitude importance of each hidden neuron: the L2 norm of everything that goes
    with it (row j of fc1, bias j, column j of fc2), as `compress.importance` scores it."""
    w1, w2 = fc1.weight.detach().double(), fc2.weight.detach().double()
    total = w1.pow(2).sum(dim=1) + w2.pow(2).sum(dim=0)
    if fc1.bias is not None:
        total = total + fc1.bias.detach().double().pow(2)
    return total.sqrt().float()


# ---- lesson 02b: Taylor importance -----------------------------------------------------------------

def taylor_neuron_scores(fc1: nn.Linear, fc2: nn.Linear, grads: dict[str, torch.Tensor]
                         ) -> torch.Tensor:
    """(d_ff,) first-order Taylor score of each neuron: sum over its weights of |w * dL/dw|.
    `grads` keys: "fc1.weight", "fc1.bias" (optional), "fc2.weight"."""
    w1, g1 = fc1.weight.detach().double(), grads["fc1.weight"].double()
    w2, g2 = fc2.weight.detach().double(), grads["fc2.weight"].double()
    total = (w1 * g1).abs().sum(dim=1) + (w2 * g2).abs().sum(dim=0)
    if fc1.bias is not None and "fc1.bias" in grads:
        total = total + (fc1.bias.detach().double() * grads["fc1.bias"].double()).abs()
    return total.float()


# ---- lesson 03: linear and k-means quantization, integer GEMM --------------------------------------

def linear_quantize(weight: torch.Tensor, bits: int, granularity: str = "per_channel",
                    symmetric: bool = True) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dequantized w', scale, zero_point) on a uniform b-bit grid, per_tensor or per_channel
    (scale / zero_point shaped (1,) or (out,)); the grid of `compress.quantize`."""
    return fake_quant_weight(weight, bits, granularity, symmetric)


def sqnr_db(reference: torch.Tensor, approx: torch.Tensor) -> float:
    """10 log10(sum ref^2 / sum (ref - approx)^2), in dB."""
    return _sqnr(reference, approx)


def kmeans_quantize(weight: torch.Tensor, bits: int, iters: int = 30
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(w', codebook (2^b,), labels (weight's shape, long)): 1-D k-means over all weights
    (palettization, "weight sharing" in Han et al. 2016, Deep Compression, arXiv:1510.00149,
    with their linear initialisation: centroids spread evenly over [min w, max w])."""
    w = weight.detach().flatten().double()
    k = 2 ** bits
    codebook = torch.linspace(float(w.min()), float(w.max()), k, dtype=torch.float64)
    for _ in range(iters):
        labels = (w[:, None] - codebook[None, :]).abs().argmin(dim=1)
        sums = torch.zeros(k, dtype=torch.float64).index_add_(0, labels, w)
        counts = torch.bincount(labels, minlength=k).double()
        codebook = torch.where(counts > 0, sums / counts.clamp_min(1), codebook)
    labels = (w[:, None] - codebook[None, :]).abs().argmin(dim=1)
    w_q = codebook[labels].reshape(weight.shape).to(weight.dtype)
    return w_q, codebook.to(weight.dtype), labels.reshape(weight.shape)


def integer_linear(x_q: torch.Tensor, w_q: torch.Tensor, s_x: float, zp_x: int, s_w: float,
                   zp_w: int, s_y: float, zp_y: int, bits_y: int = 8) -> torch.Tensor:
    """y_q of a quantized Linear, integers only until one rescale (Jacob et al. 2018,
    arXiv:1712.05877, eq. 4-7; the form of ONNX QLinearMatMul):

        x ~ s_x (x_q - zp_x)   (rows, K) uint8       w ~ s_w (w_q - zp_w)   (out, K) int8
        acc = sum_k (x_q - zp_x)(w_q - zp_w)   in int32
            = sum x_q w_q - zp_w sum x_q - zp_x sum w_q + K zp_x zp_w   (the cross terms)
        y_q = clamp(round(acc * s_x s_w / s_y) + zp_y, 0, 2^bits_y - 1)
    """
    x = x_q.to(torch.int32)
    w = w_q.to(torch.int32)
    k = x.shape[1]
    acc = (x.to(torch.int64) @ w.to(torch.int64).T).to(torch.int32)   # int32 accumulator
    acc = acc - zp_w * x.sum(dim=1, keepdim=True) - zp_x * w.sum(dim=1)[None, :] \
        + k * zp_x * zp_w
    y = torch.round(acc.double() * (s_x * s_w / s_y)) + zp_y
    return y.clamp(0, 2 ** bits_y - 1).to(torch.int32)


# ---- lesson 04: truncated SVD ---------------------------------------------------------------------

def truncated_svd(weight: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(U_r (out, r), V_r (r, in)) with U_r V_r the best rank-r approximation of weight
    (Eckart-Young); the singular values are split as sqrt into both factors, as `factorize` does."""
    u, s, vh = svd(weight)
    root = s[:rank].sqrt()
    return ((u[:, :rank] * root[None, :]).to(weight.dtype),
            (root[:, None] * vh[:rank]).to(weight.dtype))


def frobenius_error(weight: torch.Tensor, rank: int) -> float:
    """||W - W_r||_F of the best rank-r approximation = sqrt(sum_{i > r} s_i^2)."""
    return float(singular_values(weight)[rank:].pow(2).sum().sqrt())


# ---- lesson 05: one layer on the roofline ---------------------------------------------------------

def roofline_ms(flops: float, bytes_moved: float, peak_gops: float, bandwidth_gbs: float,
                compute_efficiency: float = 1.0, memory_efficiency: float = 1.0,
                overhead_ms: float = 0.0) -> float:
    """Time of one op: max(flops / (peak x eff), bytes / (bandwidth x eff)) + overhead, in ms
    (the per-op formula of `latency.cost.layer_latency`)."""
    compute_s = flops / (peak_gops * 1e9 * compute_efficiency)
    memory_s = bytes_moved / (bandwidth_gbs * 1e9 * memory_efficiency)
    return max(compute_s, memory_s) * 1e3 + overhead_ms


# ---- lesson 08 (capstone): mixed precision from a sensitivity scan ------------------------------

def bits_by_role(delta_wer_at_4_bits: dict[str, float], tolerance: float) -> dict[str, int]:
    """{role: 4 or 8}: 4 bits where putting that role alone at 4 bits raised the WER by at most
    `tolerance`, 8 bits elsewhere (a greedy mixed-precision rule; roles interact, so the
    combined plan is measured afterwards)."""
    return {role: 4 if delta <= tolerance else 8 for role, delta in delta_wer_at_4_bits.items()}


# ---- lesson 06: bytes of a quantized matrix -------------------------------------------------------

def int8_bytes(out_features: int, in_features: int, granularity: str = "per_channel") -> int:
    """Bytes of an int8 weight matrix as exported: one byte per weight, one fp32 scale and one
    int8 zero point per group (per_channel: out groups; per_tensor: 1)."""
    s = storage_bytes(WeightSpec(out_features, in_features, bits=8, granularity=granularity))
    return int(s["weight"]) + int(s["scale"]) + int(s["zero_point"])


# ---- lesson 07: the Linear layers of any model ----------------------------------------------------

def linear_shapes(model: nn.Module) -> dict[str, tuple[int, int]]:
    """{module path: (out_features, in_features)} of every nn.Linear in `model`."""
    return {path: (m.out_features, m.in_features) for path, m in model.named_modules()
            if isinstance(m, nn.Linear)}


# ---- lesson 09: efficient attention ----------------------------------------------------------------

def windowed_scores_macs(frames: int, window: int, heads: int, head_dim: int) -> int:
    """MACs of Q K^T and A V in blocked local attention (compress.swap_layers.WindowedSelfAttention):
    T is padded up to whole blocks of W frames (T_pad), and each block of W queries meets its own
    and both neighbouring blocks, 3W keys: 2 * H * T_pad * 3W * Dh, the latency row of
    compress.techniques.windowed_attention. Linear in T, where full attention is 2 * H * T^2 * Dh.
    """
    t_pad = -(-frames // window) * window          # ceil(T / W) * W
    return 2 * heads * t_pad * 3 * window * head_dim


def local_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, window: int
                    ) -> torch.Tensor:
    """(B, H, T, Dh) each -> (B, H, T, Dh): softmax attention in which frame i attends to frame j
    only when their blocks of `window` frames are the same or neighbours, |i//W - j//W| <= 1.

    Written with a (T, T) mask it still costs T^2 (it computes the masked scores too); the
    workbench's WindowedSelfAttention computes the same numbers block by block, 3W keys per query.
    """
    t = q.shape[-2]
    block = torch.arange(t) // window
    allowed = (block[:, None] - block[None, :]).abs() <= 1            # (T, T)
    scores = torch.matmul(q, k.transpose(-1, -2)) * q.shape[-1] ** -0.5
    return torch.matmul(scores.masked_fill(~allowed, float("-inf")).softmax(-1), v)


def linear_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """(B, H, T, Dh) each -> (B, H, T, Dh): phi(q_i) . (sum_j phi(k_j) v_j^T) / (phi(q_i) . sum_j
    phi(k_j)), phi = elu + 1 (Katharopoulos et al. 2020, arXiv:2006.16236). The (Dh, Dh) summary
    is computed once, so the cost is linear in T; no (T, T) matrix is ever formed."""
    fq = torch.nn.functional.elu(q) + 1.0
    fk = torch.nn.functional.elu(k) + 1.0
    kv = torch.matmul(fk.transpose(-1, -2), v)                  # (B, H, Dh, Dh)
    z = fk.sum(dim=-2, keepdim=True)                            # (B, H, 1, Dh)
    return torch.matmul(fq, kv) / ((fq * z).sum(-1, keepdim=True) + 1e-6)


# ---- lesson 10: noise at a chosen SNR ------------------------------------------------------------

def add_noise(clean: torch.Tensor, noise: torch.Tensor, snr_db: float) -> torch.Tensor:
    """clean + g * noise with g chosen so that 10 log10(P_clean / P_(g noise)) = snr_db
    (P = mean square); noise as long as clean."""
    p_clean = clean.double().pow(2).mean()
    p_noise = noise.double().pow(2).mean()
    gain = torch.sqrt(p_clean / (p_noise * 10 ** (snr_db / 10)))
    return (clean.double() + gain * noise.double()).to(clean.dtype)


# ---- lesson 11: what a streaming user waits for -------------------------------------------------

def first_partial_ms(chunk_s: float, lookahead_s: float, stem_s: float, compute_ms: float) -> float:
    """Audio to wait for (chunk + look-ahead + the conv stem's receptive field) plus the compute
    of one chunk, in ms."""
    return (chunk_s + lookahead_s + stem_s) * 1e3 + compute_ms




# ---- lesson 12: the cost of autoregressive decoding ---------------------------------------------

def whisper_ms(encoder_ms: float, cross_kv_ms: float, per_token_ms: float, steps: int) -> float:
    """Latency of one utterance with the full Whisper model: the encoder and the cross-attention
    keys/values of its output run once per utterance, then `steps` decoder steps of one position
    each (`workbench.whisper_latency.price_whisper`, whose step count `whisper_tables` returns)."""
    return encoder_ms + cross_kv_ms + steps * per_token_ms
