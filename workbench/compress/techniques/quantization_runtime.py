"""How each layer's planned quantization runs in a runtime, decided before any graph work: the
quant technique's export handlers (registered as its `runtime_exports`: "onnxruntime" -> decide,
"executorch" -> pte_decide; the export asks the registry for them).

ONNX Runtime (CPU), `decide`:

    planned (plan)                          runs as (ORT CPU)                       same grid?
    Linear  8 bit, per_channel/per_tensor   int8 dynamic: MatMulInteger (weights    weights yes;
                                            int8 per channel; input uint8 per       input is also
                                            tensor, quantized at run time)          quantized (*)
    Linear  8 bit, per_block                MatMulNBits 8 bit, block 32             yes
    Linear  8 bit + act_bits 8              static QDQ (QuantizeLinear on the       yes (ranges
                                            input, int8 weights) -> fused int8      from the plan's
                                            MatMul                                  calibration)
    Linear  2 / 4 bit, any granularity      MatMulNBits (block-wise along K; a      yes
                                            per-channel grid is written as equal
                                            scales in every block)
    Conv    8 / 4 bit                       int8 / int4 weights + DequantizeLinear  yes
                                            (opset 21), fp32 Conv (ConvInteger was
                                            slower than fp32 Conv on this CPU)
    Conv    8 bit + act_bits 8              static QDQ (QLinearConv)                yes
    any     16 bit                          fp16 weights + Cast, fp32 compute       yes
                                            (ORT's CPU provider has no fp16 MatMul
                                            / Conv kernels on x86)
    Linear  3 bit                           rounded UP to 4 (MatMulNBits)           no: listed
    Linear  5 / 6 / 7 bit                   rounded UP to 8                         no: listed
    Conv    2 / 3 bit                       rounded UP to 4                         no: listed
    Conv    5 / 6 / 7 bit                   rounded UP to 8                         no: listed
    Conv    per_block grid                  per_channel (blocks of the flattened    no: listed
                                            (in, k) axis do not fit DequantizeLinear)
    weight fp32 + act_bits 8                kept fp32 (no activation-only kernel)  no: listed
    act_bits 8 with weight bits != 8        activations left float                 no: listed

(*) `dynamic_activations` marks these: the simulation keeps that input in float unless the
compression core models ORT's dynamic quantization (see the export report).
`strict=True` refuses every "no" row instead of rounding (UnsupportedBitsError).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from workbench.plan import QuantConfig

Method = Literal["int8_dynamic", "int8_static_qdq", "nbits", "weight_only", "fp16_weight", "fp32"]

#: Bit widths MatMulNBits runs on the CPU provider (onnxruntime 1.32: 2, 4, 8).
NBITS_WIDTHS = (2, 4, 8)


@dataclass(frozen=True)
class Decision:
    """What the export does with one layer, and how it differs from the plan."""

    path: str
    kind: str                       # "linear" | "conv"
    planned: str                    # the plan's setting in words
    method: Method
    bits: int                       # weight bits at run time (32 = fp32)
    granularity: str                # the grid the runtime weights follow
    symmetric: bool
    act_static: bool                # input quantized with calibrated ranges (QDQ)
    dynamic_activations: bool       # input quantized at run time, which the plan does not say
    exact: bool                     # runtime weight grid == the simulated grid
    changes: tuple[str, ...] = ()   # plain-language differences from the plan (rounded up, ...)

    @property
    def runs_as(self) -> str:
        return {"int8_dynamic": f"int8 dynamic MatMulInteger ({self.granularity})",
                "int8_static_qdq": f"int8 static QDQ ({self.granularity}, act uint8)",
                "nbits": f"MatMulNBits {self.bits}-bit block-wise",
                "weight_only": f"int{self.bits} weights + DequantizeLinear ({self.granularity}), "
                               f"fp32 compute",
                "fp16_weight": "fp16 weights + Cast, fp32 compute",
                "fp32": "fp32"}[self.method]


def describe_quant(q: QuantConfig) -> str:
    if q.weight_bits is None:
        weights = "fp32 weights"
    elif q.weight_bits == 16:
        weights = "fp16"
    else:
        weights = f"int{q.weight_bits} {q.granularity}{'' if q.symmetric else ' asym'}"
    return weights + (" + act int8" if q.act_bits else "")


def decide(path: str, kind: str, q: QuantConfig) -> Decision:
    """The runtime form of one layer's QuantConfig (see the module docstring's table)."""
    bits, act = q.weight_bits, q.act_bits is not None
    planned = describe_quant(q)
    changes: list[str] = []

    def make(method: Method, run_bits: int, granularity: str, act_static: bool = False,
             dynamic: bool = False) -> Decision:
        return Decision(path, kind, planned, method, run_bits, granularity, q.symmetric,
                        act_static, dynamic, exact=not changes, changes=tuple(changes))

    if bits is None:
        changes.append("activation-only int8 has no ONNX Runtime kernel: layer kept fp32")
        return make("fp32", 32, q.granularity)
    if bits == 16:
        if act:
            changes.append("act_bits 8 ignored for fp16 weights: input stays float")
        return make("fp16_weight", 16, q.granularity)
    if kind == "conv":
        run_bits = 4 if bits <= 4 else 8
        if bits not in (4, 8):
            changes.append(f"int{bits} Conv weights have no ONNX type / kernel: rounded up to "
                           f"int{run_bits}")
        granularity = q.granularity
        if granularity == "per_block":
            changes.append("per_block Conv weights need opset 21 blocked DequantizeLinear: "
                           "exported per_channel")
            granularity = "per_channel"
        if act and bits == 8 and not changes:
            return make("int8_static_qdq", 8, granularity, act_static=True)
        if act:
            changes.append(f"act_bits 8 with int{bits} {q.granularity} Conv weights: input "
                           f"stays float")
        return make("weight_only", run_bits, granularity)
    # Linear
    if bits in (3, 5, 6, 7):
        up = 4 if bits == 3 else 8
        changes.append(f"int{bits} has no ONNX Runtime kernel: rounded up to int{up}")
        bits = up
    if bits == 8 and q.granularity != "per_block":
        if act and not changes:
            return make("int8_static_qdq", 8, q.granularity, act_static=True)
        if act:
            changes.append("act_bits 8 dropped with the rounded weights: input quantized "
                           "dynamically at run time instead")
        return make("int8_dynamic", 8, q.granularity, dynamic=True)
    if act:
        changes.append(f"act_bits 8 with int{bits} {q.granularity} weights: MatMulNBits keeps "
                       f"the input float")
    return make("nbits", bits, q.granularity)


def pte_decide(path: str, kind: str, q: QuantConfig) -> Decision:
    """How one layer's QuantConfig runs in ExecuTorch + XNNPACK (the table is in
    workbench.export.executorch's docstring; grouped convs are kept fp32 there, per model)."""
    planned = describe_quant(q)
    bits, act = q.weight_bits, q.act_bits is not None
    changes: list[str] = []
    if bits is None or bits == 16:
        changes.append("fp16 weights: kept fp32 in the .pte" if bits == 16 else
                       "activation-only int8 has no XNNPACK kernel: layer kept fp32")
        return Decision(path, kind, planned, "fp32", 32, q.granularity, q.symmetric, False,
                        False, exact=False, changes=tuple(changes))
    if bits < 8:
        changes.append(f"int{bits} weights: no sub-8-bit path in this ExecuTorch export, "
                       f"rounded up to int8 per channel")
    granularity = q.granularity
    if granularity != "per_channel":
        changes.append(f"{granularity} int8 weights have no XNNPACK dynamic kernel: exported "
                       f"per channel")
        granularity = "per_channel"
    if not q.symmetric:
        changes.append("XNNPACK int8 weights are symmetric: asymmetric grid exported symmetric")
    static = act and not changes
    if act and changes:
        changes.append("act_bits 8 dropped with the changed weights: input quantized "
                       "dynamically at run time instead")
    return Decision(path, kind, planned, "int8_static_qdq" if static else "int8_dynamic", 8,
                    granularity, True, act_static=static, dynamic_activations=not static,
                    exact=not changes, changes=tuple(changes))
