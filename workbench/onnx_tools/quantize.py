"""ONNX Runtime's dynamic int8 quantizer on chosen weight nodes (the export's `int8_dynamic`
method and the host latency calibration's int8 variants run this same pass).

    dynamic_int8(proto, nodes, per_channel=True, symmetric=True) -> onnx.ModelProto

MatMulInteger with int8 weights (symmetric per channel: the simulation's grid, scale =
max|w| / 127) and DynamicQuantizeLinear on the input; `nodes` are found by module path
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
        return onnx.load(str(dst))
