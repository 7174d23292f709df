"""ONNX Runtime's dynamic int8 quantizer on chosen weight nodes (the export's `int8_dynamic`
method and the host latency calibration's int8 variants run this same pass).

    dynamic_int8(proto, nodes, per_channel=True, symmetric=True) -> onnx.ModelProto

MatMulInteger with int8 weights (symmetric per channel: the simulation's grid, scale =
max|w| / 127) and DynamicQuantizeLinear on the input; `nodes` are found by module path
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
        return onnx.load(str(dst))
