"""ONNX Runtime's dynamic int8 quantizer on chosen weight nodes (the export's `int8_dynamic`
method and the host latency calibration's int8 variants run this same pass).

    dynamic_int8(proto, nodes, per_channel=True, symmetric=True) -> onnx.ModelProto

MatMulInteger with 8-bit weights (symmetric per channel: the simulation's grid, scale =
max|w| / 127; stored as uint8 + 128, see `unsigned_matmul_weights`) and DynamicQuantizeLinear on
the input; `nodes` are found by module path
(graph_map), so exactly the plan's layers are quantized.
"""
from __future__ import annotations

import contextlib
import logging
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from workbench.onnx_tools.exporter import to_bytes
from workbench.onnx_tools.graph_map import WeightNode

if TYPE_CHECKING:
    import onnx


@contextlib.contextmanager
def quiet_ort() -> Iterator[None]:
    """ORT's quantizers log advice (pre-processing) on the root logger; keep the CLI quiet."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def dynamic_int8(proto: onnx.ModelProto, nodes: Sequence[WeightNode], per_channel: bool = True,
                 symmetric: bool = True) -> onnx.ModelProto:
    """A copy of `proto` with the MatMuls `nodes` quantized by ORT's `quantize_dynamic`."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with tempfile.TemporaryDirectory(prefix="workbench-int8-") as tmp:
        src, dst = Path(tmp) / "dynamic_in.onnx", Path(tmp) / "dynamic_out.onnx"
        src.write_bytes(to_bytes(proto))
        with quiet_ort():
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
