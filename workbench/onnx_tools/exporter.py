"""fp32 ONNX export of a CTC model: one file, dynamic time axis, deterministic bytes.

    export_fp32(model) -> onnx.ModelProto
        inputs   features (1, n_mels, T) float32 log-mel at 100 Hz, feat_lengths (1,) int64
        outputs  log_probs (1, T', vocab) float32, lengths (1,) int64

`torch.onnx.export(dynamo=True)` traces the model with torch.export and a symbolic T. The
exporter leaves per-node debug metadata (Python stack traces with absolute file paths, FX node
text): those differ between checkouts, so we keep only the module path of each node (key
`MODULE_KEY`), taken from `pkg.torch.onnx.name_scopes`, which the quantizers (the export's and
the host latency calibration's) use to find a plan layer's nodes (graph_map). With that,
exporting the same model twice gives byte-identical files.

Models must skip their data-dependent input checks (`bool(tensor)`) while exporting, i.e.
guard them with `torch.compiler.is_exporting()`; otherwise torch.export cannot trace them and
we raise ExportError saying so.
"""
from __future__ import annotations

import ast
import contextlib
import copy
import io
import logging
import warnings
from collections.abc import Iterator
from typing import TYPE_CHECKING

import torch
from torch import nn
from torch.nn.utils import parametrize

from workbench.models.base import input_spec
from workbench.cli_checks import signals_held
from workbench.errors import ExportError

if TYPE_CHECKING:
    import onnx

#: Input / output names of every exported model (the runtime contract).
INPUT_NAMES = ("features", "feat_lengths")
OUTPUT_NAMES = ("log_probs", "lengths")
#: Length of the example input used for tracing, in mel frames (5 s); any length works after.
EXAMPLE_FRAMES = 500
#: Shortest input the graph is traced for, in mel frames (80 ms). The stems need T' >= 2 after
#: their stride-2 convs (Conformer: T >= 5); a range torch.export cannot prove makes the exporter
#: trace the model a second time with a corrected range.
MIN_FRAMES = 8
#: Node metadata key holding the module path a node came from ("blocks.0.attn.q_proj").
MODULE_KEY = "workbench.module"
#: ONNX opset of the export: 21 for int4 DequantizeLinear (4-bit Conv weights); onnxruntime 1.32
#: runs it. MatMulNBits is a contrib op (com.microsoft domain).
OPSET = 21


def max_input_frames(model: nn.Module) -> int | None:
    """Longest input in mel frames: Whisper's 1500 positions at 50 Hz = 3000 frames; else None."""
    n_ctx = getattr(getattr(model, "config", None), "n_ctx", None)
    return 2 * int(n_ctx) if n_ctx else None


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """The exporter prints progress to stdout and warns about torchvision; keep stdout clean
    (the CLI's stdout carries JSON)."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def fold_parametrizations_(model: nn.Module) -> None:
    """Store every parametrized tensor (weight norm: weight = g * v / ||v||) as the plain tensor
    it computes, in place (on a copy you own). The inference graph then holds the weight as an
    initializer - one tensor ORT can quantize and size() prices - instead of recomputing it from
    g and v on every run (measured on torchaudio wav2vec2's positional conv: the int8 export
    found no weight node for it). The values are the ones the forward computes.

    Not torch's `remove_parametrizations`: it deletes the property from the generated
    `ParametrizedConv1d` class, which a deep copy shares with the original model, and so broke
    the caller's model (found by `workbench apply` on an adapted wav2vec2)."""
    for module in list(model.modules()):
        if parametrize.is_parametrized(module):
            values = {name: getattr(module, name).detach().clone()
                      for name in module.parametrizations.keys()}
            module.__class__ = module.__class__.__bases__[0]   # the class parametrize wrapped
            del module._modules["parametrizations"]
            for name, value in values.items():
                module.register_parameter(name, nn.Parameter(value))


def load_exporter() -> None:
    """Import the ONNX exporter's libraries now (torch.onnx imports them on first use)."""
    import onnx  # noqa: F401  (import speed: `import workbench` must not load onnx)
    import onnxscript  # noqa: F401
    from torch.onnx._internal.exporter import _compat  # noqa: F401  (what torch.onnx.export loads)


def export_fp32(model: nn.Module, example_frames: int = EXAMPLE_FRAMES) -> onnx.ModelProto:
    """fp32 ONNX of `model` (a deep copy in eval mode is traced; `model` is not changed).

    Input checks stay with the caller: the graph itself does not validate lengths.
    """
    with signals_held():   # a Ctrl-C inside onnx's native import would abort the process
        load_exporter()
    work = copy.deepcopy(model).float().eval()
    fold_parametrizations_(work)
    n_mels = input_spec(work).channels        # 1 for a waveform model (workbench.byo)
    t_max = max_input_frames(work)
    frames = min(example_frames, t_max) if t_max else example_frames
    features = torch.zeros(1, n_mels, frames)
    feat_lengths = torch.tensor([frames], dtype=torch.long)
    time_dim = torch.export.Dim("T", min=MIN_FRAMES, max=t_max) if t_max else \
        torch.export.Dim("T", min=MIN_FRAMES)
    try:
        with _quiet(), torch.no_grad():
            program = torch.onnx.export(
                work, (features, feat_lengths), dynamo=True, opset_version=OPSET,
                dynamic_shapes=({2: time_dim}, None), input_names=list(INPUT_NAMES),
                output_names=list(OUTPUT_NAMES), optimize=True, external_data=False,
                verbose=False)
    except Exception as err:  # the exporter raises many types; one clear line for the user
        text = str(err)
        hint = ""
        if "data-dependent" in text or "GuardOnDataDependent" in text:
            hint = (" The model checks its inputs with bool(tensor) while tracing; guard those "
                    "checks with `if not torch.compiler.is_exporting():` in its stem.")
        first = next((line for line in text.splitlines() if line.strip()), type(err).__name__)
        raise ExportError(f"{type(work).__name__}: torch.onnx.export(dynamo=True) failed: "
                          f"{first[:300]}.{hint}") from err
    proto = program.model_proto
    keep_module_paths_only(proto)
    proto.producer_name = "workbench"
    proto.producer_version = ""
    proto.doc_string = ""
    proto.graph.doc_string = ""
    return proto


def module_of_scopes(scopes: str) -> str | None:
    """`pkg.torch.onnx.name_scopes` text -> innermost module path ('' entries and the op skipped).

    "['', 'blocks.0', 'blocks.0.attn', 'blocks.0.attn.q_proj', 'linear']" -> "blocks.0.attn.q_proj"
    """
    names = ast.literal_eval(scopes)
    modules = [s for s in names[:-1] if s]  # the last entry is the aten op's own name
    return modules[-1] if modules else None


def keep_module_paths_only(proto: onnx.ModelProto) -> None:
    """Replace every node's metadata by its module path alone (in place, on a proto we own)."""
    for node in proto.graph.node:
        meta = {p.key: p.value for p in node.metadata_props}
        module = module_of_scopes(meta["pkg.torch.onnx.name_scopes"]) \
            if "pkg.torch.onnx.name_scopes" in meta else meta.get(MODULE_KEY)
        del node.metadata_props[:]
        if module:
            entry = node.metadata_props.add()
            entry.key, entry.value = MODULE_KEY, module
        node.doc_string = ""


def node_module(node: onnx.NodeProto) -> str | None:
    for p in node.metadata_props:
        if p.key == MODULE_KEY:
            return p.value
    return None


def to_bytes(proto: onnx.ModelProto) -> bytes:
    """Deterministic serialization (protobuf writes fields in field-number order; map-free)."""
    return proto.SerializeToString(deterministic=True)
