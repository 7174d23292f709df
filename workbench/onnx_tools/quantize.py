"""ONNX Runtime's dynamic int8 quantizer on chosen weight nodes (the export's `int8_dynamic`
method and the host latency calibration's int8 variants run this same pass).

    dynamic_int8(proto, nodes, per_channel=True, symmetric=True, weights="auto") -> ModelProto
    int8_storage(weights="auto") -> Int8Storage      how int8 weights are stored, and why
    u8s8_is_exact() -> bool                          the probe (cached per process)

MatMulInteger with 8-bit weights (symmetric per channel: the simulation's grid, scale =
max|w| / 127) and DynamicQuantizeLinear on the input; `nodes` are found by module path
(graph_map), so exactly the plan's layers are quantized.

Int8 weight storage (`weights`): "signed" keeps ORT's int8 weights (its U8S8 kernels: VNNI on
x86 CPUs that have it, about 2x faster than U8U8 there); "unsigned" stores them as uint8 + 128
(`unsigned_matmul_weights`: U8U8 kernels, exact on every CPU); "auto" = signed when
`u8s8_is_exact()` says this CPU's U8S8 kernel computes a saturating product exactly, else
unsigned. The probe describes THIS machine: a model for an x86 target without VNNI (AVX2 only)
needs "unsigned" whatever the probe says here.
"""
from __future__ import annotations

import functools
import logging
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from workbench.errors import ArgumentError
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


#: The `weights` / `--int8-weights` choices.
INT8_WEIGHTS = ("auto", "signed", "unsigned")

#: The warning every signed export carries (the probe can only speak for this machine).
SIGNED_WARNING = ("signed int8 weights run ORT's U8S8 kernels, which saturate on x86 CPUs "
                  "without VNNI (AVX2 only: wrong outputs, 37 % off on a test MatMul); a model "
                  "for such a target needs --int8-weights unsigned (uint8 + 128, exact "
                  "everywhere).")


class Int8WeightsError(ArgumentError):
    """An unknown int8 weight storage choice."""


@dataclass(frozen=True)
class Int8Storage:
    """How int8 MatMul / weight DequantizeLinear weights are stored, and why."""

    requested: str                  # "auto" | "signed" | "unsigned"
    signed: bool                    # True: int8 (U8S8 kernels); False: uint8 + 128 (U8U8)
    u8s8_exact: bool                # the probe's answer on this CPU
    reason: str

    @property
    def storage(self) -> str:
        return "signed" if self.signed else "unsigned"

    def as_dict(self) -> dict[str, object]:
        """The report's `int8_weights` section."""
        out: dict[str, object] = {"requested": self.requested, "storage": self.storage,
                                  "u8s8_exact_on_this_cpu": self.u8s8_exact,
                                  "reason": self.reason}
        if self.signed:
            out["warning"] = SIGNED_WARNING
        return out


def check_int8_weights(weights: str) -> str:
    """`weights` if it is one of INT8_WEIGHTS, else Int8WeightsError (one line)."""
    if weights not in INT8_WEIGHTS:
        raise Int8WeightsError(f"int8_weights {weights!r}: unknown; choose one of "
                               f"{', '.join(INT8_WEIGHTS)} (auto: signed when this CPU's U8S8 "
                               f"kernel is exact, else uint8 + 128).")
    return weights


#: The probe's MatMulInteger: 4 x 384 by 384 x 64, the shape seen 37 % off on AVX2 machines.
_PROBE_SHAPE = (4, 384, 64)


def probe_inputs() -> tuple[np.ndarray, np.ndarray]:
    """uint8 inputs at 255 (a few at 0) and int8 weights at +-127 (seeded): most int16 pair sums
    of VPMADDUBSW (255 * 127 * 2 = 64,770 > 32,767) saturate on a U8S8 kernel without VNNI."""
    m, k, n = _PROBE_SHAPE
    rng = np.random.default_rng(0)
    a = np.full((m, k), 255, dtype=np.uint8)
    a[:, ::97] = 0
    b = np.where(rng.random((k, n)) < 0.5, -127, 127).astype(np.int8)
    return a, b


def matmul_integer_model(b: np.ndarray, b_zero_point: np.ndarray) -> onnx.ModelProto:
    """y = MatMulInteger(a, b, 0, b_zero_point), int32 out; b and its zero point as initializers
    (int8 -> U8S8 kernel, uint8 -> U8U8)."""
    from onnx import TensorProto, helper, numpy_helper

    m, k, n = _PROBE_SHAPE
    graph = helper.make_graph(
        [helper.make_node("MatMulInteger", ["a", "b", "a_zp", "b_zp"], ["y"], name="mm")],
        "u8s8_probe", [helper.make_tensor_value_info("a", TensorProto.UINT8, [m, k])],
        [helper.make_tensor_value_info("y", TensorProto.INT32, [m, n])],
        [numpy_helper.from_array(b, "b"), numpy_helper.from_array(b_zero_point, "b_zp"),
         numpy_helper.from_array(np.array(0, dtype=np.uint8), "a_zp")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def run_int32(model: onnx.ModelProto, a: np.ndarray) -> np.ndarray:
    """`model` run once in ONNX Runtime (CPU, 1 thread) on input `a`."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(model.SerializeToString(), options,
                                   providers=["CPUExecutionProvider"])
    return session.run(None, {"a": a})[0]


@functools.cache
def u8s8_is_exact() -> bool:
    """Does ONNX Runtime's U8S8 kernel (uint8 inputs x int8 weights) give the exact integer
    product on this CPU, for inputs where VPMADDUBSW's int16 pair sums would saturate? True on
    x86 CPUs with VNNI (and on ARM); False on AVX2-only x86. One small MatMulInteger, a few ms;
    cached per process."""
    a, b = probe_inputs()
    got = run_int32(matmul_integer_model(b, np.array(0, dtype=np.int8)), a)
    return bool(np.array_equal(got, a.astype(np.int64) @ b.astype(np.int64)))


def int8_storage(weights: str = "auto", probe: bool | None = None) -> Int8Storage:
    """The storage for `weights` ("auto" | "signed" | "unsigned"), with its reason. `probe`:
    the probe's result, when already known (default: `u8s8_is_exact()`, run once a process)."""
    check_int8_weights(weights)
    exact = u8s8_is_exact() if probe is None else probe
    here = ("this CPU's U8S8 kernel is exact (probe)" if exact else
            "U8S8 saturates on this CPU (x86 without VNNI, e.g. AVX2 only; probe)")
    if weights == "auto":
        signed = exact
        reason = (f"signed int8 weights: {here}" if exact else f"uint8+128: {here}")
    elif weights == "signed":
        signed = True
        reason = (f"signed int8 weights (requested): {here}" if exact else
                  f"signed int8 weights (requested) although {here}: ONNX Runtime's int8 "
                  f"results on this CPU are wrong where inputs near 255 meet weights near +-127")
    else:
        signed = False
        reason = (f"uint8+128 (requested): exact on every CPU ({here}; about 2x slower than "
                  f"signed where VNNI runs U8S8)")
    return Int8Storage(weights, signed, exact, reason)


def dynamic_int8(proto: onnx.ModelProto, nodes: Sequence[WeightNode], per_channel: bool = True,
                 symmetric: bool = True, weights: str = "auto") -> onnx.ModelProto:
    """A copy of `proto` with the MatMuls `nodes` quantized by ORT's `quantize_dynamic`, int8
    weights stored as `weights` says (module docstring)."""
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
    if not int8_storage(weights).signed:
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
