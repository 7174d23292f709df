"""Named starting plans, as data. Each returns a CompressionPlan built only from role groups and
a default, so it fits any model whose layers carry the usual roles (Whisper CTC, Conformer CTC,
or any module whose attention / FFN / conv modules are found by kind). Plain data at the plan
layer (below checks, which suggests a preset's name for a mistyped string).

4-bit presets use granularity "per_block" (32 inputs per scale): the layout ONNX Runtime's
MatMulNBits runs, so what is simulated is what can be exported.
"""
from __future__ import annotations

from workbench.plan import CompressionPlan, LayerConfig, PruneConfig, QuantConfig

INT8 = QuantConfig(weight_bits=8, granularity="per_channel", symmetric=True)
INT4 = QuantConfig(weight_bits=4, granularity="per_block", symmetric=True)
FP16 = QuantConfig(weight_bits=16)


def int8_everywhere() -> CompressionPlan:
    """int8 symmetric per-channel weights in every Linear / Conv layer."""
    return CompressionPlan(default=LayerConfig(quant=INT8))


def int4_everywhere() -> CompressionPlan:
    """4-bit block-wise weights everywhere except the front-end and the CTC head (int8): the
    first and last layers are the most sensitive to quantization and hold few weights."""
    plan = CompressionPlan(default=LayerConfig(quant=INT4))
    for role in ("front-end", "head"):
        plan = plan.with_group(role, LayerConfig(quant=INT8))
    return plan


def fp16_everywhere() -> CompressionPlan:
    """fp16 weights everywhere (half the bytes, essentially lossless)."""
    return CompressionPlan(default=LayerConfig(quant=FP16))


def int4_ffn_int8_attention() -> CompressionPlan:
    """4-bit block-wise FFN weights (most of the parameters), int8 everywhere else."""
    return int8_everywhere().with_group("ffn", LayerConfig(quant=INT4))


def prune_ffn_neurons(amount: float = 0.5, importance: str = "magnitude") -> CompressionPlan:
    """Remove `amount` of the hidden neurons of every FFN; nothing else changes."""
    return CompressionPlan().with_group(
        "ffn", LayerConfig(prune=PruneConfig(amount=amount, structure="neurons",
                                             importance=importance)))


def prune_attention_heads(amount: float = 0.25, importance: str = "magnitude") -> CompressionPlan:
    """Remove `amount` of the heads of every attention module."""
    return CompressionPlan().with_group(
        "attention", LayerConfig(prune=PruneConfig(amount=amount, structure="heads",
                                                   importance=importance)))


def low_rank_ffn(energy: float = 0.9) -> CompressionPlan:
    """Factorize every FFN Linear, keeping `energy` of its squared singular values."""
    return CompressionPlan().with_group("ffn", LayerConfig(energy=energy))


#: name -> factory, for menus.
PRESETS = {
    "int8_everywhere": int8_everywhere,
    "int4_everywhere": int4_everywhere,
    "fp16_everywhere": fp16_everywhere,
    "int4_ffn_int8_attention": int4_ffn_int8_attention,
    "prune_ffn_neurons": prune_ffn_neurons,
    "prune_attention_heads": prune_attention_heads,
    "low_rank_ffn": low_rank_ffn,
}
