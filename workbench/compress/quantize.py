"""Simulated (fake) quantization: weights rounded to a b-bit grid and kept as float tensors.

Weight grids (w: the weights of one group; a group is the whole tensor, one output channel, or
one block of `BLOCK_SIZE` consecutive inputs of one output channel):

    symmetric:  scale = max|w| / (2^(b-1) - 1), zero_point = 0,
                q = clamp(round(w / scale), -2^(b-1), 2^(b-1) - 1)
    asymmetric: lo = min(min w, 0), hi = max(max w, 0), scale = (hi - lo) / (2^b - 1),
                zero_point = round(-lo / scale),
                q = clamp(round(w / scale) + zero_point, 0, 2^b - 1)
    dequantized w' = (q - zero_point) * scale   (|w - w'| <= scale / 2; round half to even)
    16 bits:    w' = fp16(w) (no scale)

Including 0 in [lo, hi] keeps zero exactly representable, so pruned weights stay zero. A group of
zeros gets scale 1. The quantized layer keeps `weight` (already rounded), and buffers
`weight_scale` (groups) and `weight_zero_point` (int32, same shape) plus attributes
`weight_bits`, `granularity`, `symmetric`, `block_size`, so an exporter reads the exact grid.

Activations (input of a quantized layer, act_bits=8): per tensor, asymmetric, uint8 [0, 255],
scale and zero point from min/max observed on a calibration set (`observing` context).
"""
from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from workbench.errors import WorkbenchError
from workbench.plan import QuantConfig

#: Inputs per block for granularity "per_block": ONNX Runtime MatMulNBits' default block_size
#: (onnxruntime.quantization.matmul_nbits_quantizer, block_size=32).
BLOCK_SIZE = 32
#: Buffers a quantized / pruned layer carries for bookkeeping (not weights of the model).
BOOKKEEPING_BUFFERS = ("weight_scale", "weight_zero_point", "weight_mask")


def grouped(weight: torch.Tensor, granularity: str, block_size: int = BLOCK_SIZE) -> torch.Tensor:
    """(out, ...) weight -> (groups, group_len): one row per scale. Blocks pad K with zeros."""
    w2 = weight.reshape(weight.shape[0], -1)  # (out, K)
    if granularity == "per_tensor":
        return w2.reshape(1, -1)
    if granularity == "per_channel":
        return w2
    out, k = w2.shape
    n_blocks = math.ceil(k / block_size)
    padded = torch.nn.functional.pad(w2, (0, n_blocks * block_size - k))
    return padded.reshape(out * n_blocks, block_size)


def ungrouped(groups: torch.Tensor, like: torch.Tensor, granularity: str) -> torch.Tensor:
    """Inverse of `grouped`: back to the shape of `like` (dropping block padding)."""
    out = like.shape[0]
    k = like.numel() // out
    return groups.reshape(out, -1)[:, :k].reshape(like.shape)


def quant_params(groups: torch.Tensor, bits: int, symmetric: bool
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale (groups,), zero_point (groups,) int32) of each row of `groups`."""
    g = groups.detach().double()
    if symmetric:
        scale = g.abs().amax(dim=1) / (2 ** (bits - 1) - 1)
        zero_point = torch.zeros_like(scale)
    else:
        lo = g.amin(dim=1).clamp(max=0.0)
        hi = g.amax(dim=1).clamp(min=0.0)
        scale = (hi - lo) / (2 ** bits - 1)
    scale = torch.where(scale > 0, scale, torch.ones_like(scale)).float()
    if not symmetric:
        zero_point = torch.round(-lo / scale.double()).clamp(0, 2 ** bits - 1)
    return scale, zero_point.to(torch.int32)


def fake_quant_groups(groups: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor,
                      bits: int, symmetric: bool) -> torch.Tensor:
    """Round each row of `groups` to its grid and map it back to floats."""
    s = scale[:, None]
    zp = zero_point[:, None].to(groups.dtype)
    if symmetric:
        q = torch.clamp(torch.round(groups / s), -(2 ** (bits - 1)), 2 ** (bits - 1) - 1)
    else:
        q = torch.clamp(torch.round(groups / s) + zp, 0, 2 ** bits - 1)
    return (q - zp) * s


def fake_quant_weight(weight: torch.Tensor, bits: int, granularity: str = "per_channel",
                      symmetric: bool = True, block_size: int = BLOCK_SIZE
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(w' same shape as weight, scale, zero_point); scale/zero_point shaped (1,), (out,) or
    (out, n_blocks). Pure: `weight` is not changed."""
    if bits == 16:
        empty = torch.ones(0)
        return weight.detach().half().float(), empty, empty.to(torch.int32)
    groups = grouped(weight.detach().float(), granularity, block_size)
    scale, zero_point = quant_params(groups, bits, symmetric)
    w_q = ungrouped(fake_quant_groups(groups, scale, zero_point, bits, symmetric), weight,
                    granularity)
    if granularity == "per_block":
        scale = scale.reshape(weight.shape[0], -1)
        zero_point = zero_point.reshape(weight.shape[0], -1)
    return w_q, scale, zero_point


def sqnr_db(reference: torch.Tensor, approx: torch.Tensor) -> float:
    """Signal-to-quantization-noise ratio in dB: 10 log10(sum ref^2 / sum (ref - approx)^2)."""
    ref, approx = reference.detach().double(), approx.detach().double()
    return float(10 * torch.log10(ref.pow(2).sum() / (ref - approx).pow(2).sum()))


class ActivationFakeQuant(nn.Module):
    """Per-tensor asymmetric uint8 fake quantization of a layer input, from observed min/max."""

    def __init__(self, bits: int = 8) -> None:
        super().__init__()
        self.bits = bits
        self.observing = False
        self.register_buffer("min_val", torch.tensor(float("inf")))
        self.register_buffer("max_val", torch.tensor(float("-inf")))

    def scale_zero_point(self) -> tuple[float, int]:
        if not torch.isfinite(self.min_val):
            raise WorkbenchError("act_bits: this layer's activation range was never observed; "
                                 "compress with a calibration set (calib=...) or run the model "
                                 "inside `observing(model)` first.")
        lo, hi = min(float(self.min_val), 0.0), max(float(self.max_val), 0.0)
        levels = 2 ** self.bits - 1
        scale = (hi - lo) / levels if hi > lo else 1.0
        return scale, int(min(max(round(-lo / scale), 0), levels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.observing:
            self.min_val = torch.minimum(self.min_val, x.detach().amin().float())
            self.max_val = torch.maximum(self.max_val, x.detach().amax().float())
            return x
        scale, zero_point = self.scale_zero_point()
        return torch.fake_quantize_per_tensor_affine(x, scale, zero_point, 0, 2 ** self.bits - 1)


@contextmanager
def observing(module: nn.Module) -> Iterator[nn.Module]:
    """Inside the block, the activation quantizers of `module` record min/max and pass their
    input through unchanged."""
    quantizers = [m for m in module.modules() if isinstance(m, ActivationFakeQuant)]
    for q in quantizers:
        q.observing = True
    try:
        yield module
    finally:
        for q in quantizers:
            q.observing = False


class _FakeQuantMixin:
    """Shared state of the fake-quantized layers; the input passes `act_quant` first if set."""

    weight_bits: int
    granularity: str
    symmetric: bool
    block_size: int
    act_quant: ActivationFakeQuant | None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.act_quant is not None:
            x = self.act_quant(x)
        return super().forward(x)  # type: ignore[misc]

    def extra_repr(self) -> str:
        act = f", act_bits={self.act_quant.bits}" if self.act_quant is not None else ""
        return (f"{super().extra_repr()}, weight_bits={self.weight_bits}, "  # type: ignore[misc]
                f"granularity={self.granularity}, symmetric={self.symmetric}{act}")


class QuantLinear(_FakeQuantMixin, nn.Linear):
    """nn.Linear whose weight sits on a b-bit grid (see the module docstring)."""


class QuantConv1d(_FakeQuantMixin, nn.Conv1d):
    """nn.Conv1d whose weight sits on a b-bit grid (per output channel = dim 0)."""


class QuantConv2d(_FakeQuantMixin, nn.Conv2d):
    """nn.Conv2d whose weight sits on a b-bit grid (per output channel = dim 0)."""


_QUANT_CLASS = {nn.Linear: QuantLinear, nn.Conv1d: QuantConv1d, nn.Conv2d: QuantConv2d}


def _float_class(module: nn.Module) -> type[nn.Module]:
    for base in (nn.Linear, nn.Conv1d, nn.Conv2d):
        if isinstance(module, base):
            return base
    raise WorkbenchError(f"quant: {type(module).__name__} is not a Linear/Conv1d/Conv2d layer.")


def quantize_layer(layer: nn.Module, config: QuantConfig) -> nn.Module:
    """A new fake-quantized copy-by-reference of `layer` (the input layer is not changed).

    Weight bits None keeps fp32 weights (only the input is quantized when act_bits is 8).
    A `weight_mask` buffer (unstructured pruning) is carried over and re-applied.
    """
    base = _float_class(layer)
    cls = _QUANT_CLASS[base]
    if base is nn.Linear:
        new = cls(layer.in_features, layer.out_features, bias=layer.bias is not None,
                  device="meta")
    else:
        new = cls(layer.in_channels, layer.out_channels, layer.kernel_size, stride=layer.stride,
                  padding=layer.padding, dilation=layer.dilation, groups=layer.groups,
                  bias=layer.bias is not None, padding_mode=layer.padding_mode, device="meta")
    bits = config.weight_bits
    weight = layer.weight.detach()
    if bits is None:
        w_q, scale, zero_point = weight.clone(), torch.ones(0), torch.zeros(0, dtype=torch.int32)
    else:
        w_q, scale, zero_point = fake_quant_weight(weight, bits, config.granularity,
                                                   config.symmetric)
    mask = getattr(layer, "weight_mask", None)
    if mask is not None:
        w_q = w_q * mask
        new.register_buffer("weight_mask", mask.clone())
    new.weight = nn.Parameter(w_q.to(weight.dtype), requires_grad=layer.weight.requires_grad)
    new.bias = None if layer.bias is None else nn.Parameter(
        layer.bias.detach().clone(), requires_grad=layer.bias.requires_grad)
    new.register_buffer("weight_scale", scale)
    new.register_buffer("weight_zero_point", zero_point)
    new.weight_bits = 32 if bits is None else bits
    new.granularity = config.granularity
    new.symmetric = config.symmetric
    new.block_size = BLOCK_SIZE
    new.act_quant = ActivationFakeQuant(config.act_bits) if config.act_bits else None
    new.train(layer.training)
    return new
