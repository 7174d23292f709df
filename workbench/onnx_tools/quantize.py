"""ONNX Runtime's dynamic int8 quantizer on chosen weight nodes (the export's `int8_dynamic`
method and the host latency calibration's int8 variants run this same pass).

    dynamic_int8(proto, nodes, per_channel=True, symmetric=True) -> onnx.ModelProto

MatMulInteger with 8-bit weights (symmetric per channel: the simulation's grid, scale =
max|w| / 127; stored as uint8 + 128, see `unsigned_matmul_weights`) and DynamicQuantizeLinear on
the input; `nodes` are found by module path
(graph_map), so exactly the plan's layers are quantized.
"""
from __future__ import annotations

import logging
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from workbench.onnx_tools.exporter import to_bytes
from workbench.onnx_tools.graph_map import WeightNode

if TYPE_CHECKING:
    import onnx


#: Where ORT's quantization code lives (records logged from there are its advice).
_ORT_QUANTIZATION = "onnxruntime/quantization/"


class _OrtQuantizationAdvice(logging.Filter):
    """Drops the info / warning records ORT's quantizers log on the root logger (advice such as
    "consider pre-processing before quantization"), by the file that logged them; their errors,
    and every other module's records, pass."""

    def filter(self, record: logging.LogRecord) -> bool:
        return (record.levelno >= logging.ERROR
                or _ORT_QUANTIZATION not in record.pathname.replace("\\", "/"))


_ADVICE_FILTER = _OrtQuantizationAdvice()


def quiet_ort() -> None:
    """Keep the CLI quiet while ORT quantizes, without touching anyone else's logging: once per
    process, a filter on the root logger for the records ORT's quantization modules log there,
    and the level of ORT's own `onnxruntime.quantization` loggers set to ERROR. (It set the
    root logger's level around each call: from job threads that dropped every other thread's
    records meanwhile, and two overlapping exports could restore the wrong level.)"""
    root = logging.getLogger()
    if _ADVICE_FILTER not in root.filters:
        root.addFilter(_ADVICE_FILTER)
        logging.getLogger("onnxruntime.quantization").setLevel(logging.ERROR)


def dynamic_int8(proto: onnx.ModelProto, nodes: Sequence[WeightNode], per_channel: bool = True,
                 symmetric: bool = True) -> onnx.ModelProto:
    """A copy of `proto` with the MatMuls `nodes` quantized by ORT's `quantize_dynamic`."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with tempfile.TemporaryDirectory(prefix="workbench-int8-") as tmp:
        src, dst = Path(tmp) / "dynamic_in.onnx", Path(tmp) / "dynamic_out.onnx"
        src.write_bytes(to_bytes(proto))
        quiet_ort()
        quantize_dynamic(str(src), str(dst), op_types_to_quantize=["MatMul"],
                         per_channel=per_channel, weight_type=QuantType.QInt8,
                         nodes_to_quantize=[n.name for n in nodes],
                         extra_options={"MatMulConstBOnly": True,
                                        "WeightSymmetric": symmetric})
        quantized = onnx.load(str(dst))
    unsigned_matmul_weights(quantized)
    return quantized


#: Where each integer op reads its weight and the weight's zero point (input positions).
_WEIGHT_INPUTS = {"MatMulInteger": (1, 3), "DequantizeLinear": (0, 2)}


def unsigned_matmul_weights(proto: onnx.ModelProto) -> None:
    """Store each int8 weight of a MatMulInteger (dynamic) or of a weight DequantizeLinear (static
    QDQ) and its zero point as uint8 shifted by 128 (in place): the same integers (w - zp is
    unchanged), so the same results as the simulation's grid.

    Why: ORT's x86 kernel for uint8 inputs x int8 weights (U8S8) multiplies with VPMADDUBSW,
    which adds two u8*s8 products into a saturating int16; on CPUs without VNNI (AVX2 only) that
    overflows for inputs near 255 and weights near +-127. Seen on this project's AVX2 machines:
    a 4 x 384 by 384 x 64 MatMulInteger off by 37 % of its largest output, Whisper's first-step
    logits off by 0.28-0.63, and a static-QDQ layer with 99.6 % of its log-probs off by > 1e-4.
    The U8U8 kernel widens to int16 first and does not saturate (ONNX Runtime docs, "Quantize
    ONNX models", on U8S8 saturation and U8U8). A DequantizeLinear whose input is computed (an
    activation) is left alone."""
    import numpy as np
    from onnx import TensorProto, numpy_helper

    inits = {i.name: i for i in proto.graph.initializer}
    shifted: set[str] = set()
    for node in proto.graph.node:
        where = _WEIGHT_INPUTS.get(node.op_type)
        if where is None or len(node.input) <= max(where):
            continue
        pair = [inits.get(node.input[i]) for i in where]
        if any(t is None for t in pair) or any(t.data_type != TensorProto.INT8 for t in pair
                                               if t.name not in shifted):
            continue
        for t in pair:
            if t.name not in shifted:
                values = numpy_helper.to_array(t).astype(np.int16) + 128
                t.CopyFrom(numpy_helper.from_array(values.astype(np.uint8), t.name))
                shifted.add(t.name)
