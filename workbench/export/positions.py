"""Store Whisper's sinusoidal position table as the formula that makes it, not as 2.3 MB of data.

Whisper's encoder positions are fixed sinusoids, not learned weights (openai/whisper model.py
`sinusoids`; `workbench.models.whisper_ctc.whisper_sinusoids`), and the released checkpoints
hold them rounded to fp16:

    inv[j]     = exp(-j * log(10000) / (C/2 - 1)),  j = 0 .. C/2 - 1         (float64)
    table[t]   = fp16([sin(t * inv), cos(t * inv)])  (rows t = 0 .. 1499, C = 384 channels)

We replace the table initializer by a constant subgraph computing exactly that (float64 Range,
Mul, Sin, Concat, Cast to fp32, to fp16, to fp32), with cos(a) computed as sin(a + pi/2): ONNX
Runtime 1.22.0 (the ARM64 wheel `workbench verify-arm64` runs under qemu-user) has no float64 Cos
kernel on CPU and refuses such a graph at load, while its float64 Sin kernel exists. In float64
the shift moves a value by <= 7e-14, far below the fp16 rounding step, and the table the graph
computes is checked against the stored one bit for bit below. All its inputs are constants, so
ONNX Runtime evaluates it once when the session is created (constant folding): no cost per run,
the same values in memory, 1500 x 384 x 4 = 2,304,000 bytes less in the file. The float64 and the
fp16 rounding matter: the model is sensitive to the table (the float32 formula, <= 3e-4 off, moves
encoder outputs by ~0.1, see whisper_sinusoids).

We only do it when the stored table equals the formula exactly (checked here, with the float64
formula rounded as the checkpoint is; a table that is not fp16-rounded may match the unrounded
formula within 1e-6 instead). Any other table (learned positions) is left as data.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

if TYPE_CHECKING:
    import onnx

#: Largest |stored - formula| accepted for a table that is not fp16-rounded.
FLOAT_TOLERANCE = 1e-6


@dataclass(frozen=True)
class ComputedTable:
    """A table initializer replaced by its formula."""

    initializer: str
    rows: int
    channels: int
    fp16_rounded: bool        # the formula's result is rounded to fp16, as the stored table was
    max_abs_diff: float       # |stored table - formula|, the check that allowed the replacement
    bytes_saved: int


def inv_timescales(channels: int) -> np.ndarray:
    """(channels/2,) float64: exp(-j log(10000) / (C/2 - 1)) (as openai/whisper, in float64)."""
    half = channels // 2
    log_inc = math.log(10_000.0) / (half - 1)
    return torch.exp(-log_inc * torch.arange(half, dtype=torch.float64)).numpy()


def whisper_sinusoid_table(rows: int, channels: int, fp16_rounded: bool = True) -> np.ndarray:
    """(rows, channels) float32: the float64 formula, rounded to fp16 if asked."""
    angle = torch.arange(rows, dtype=torch.float64)[:, None] * torch.from_numpy(
        inv_timescales(channels))[None, :]
    table = torch.cat([angle.sin(), angle.cos()], dim=1)
    return (table.half() if fp16_rounded else table).float().numpy()


def graph_table(rows: int, channels: int, fp16_rounded: bool = True) -> np.ndarray:
    """(rows, channels) float32: what the constant subgraph computes, in numpy float64:
    [sin(a), sin(a + pi/2)] (no Cos op, see the module docstring), to float32, then to fp16 if
    asked (through float32, as torch rounds)."""
    angle = np.arange(rows, dtype=np.float64)[:, None] * inv_timescales(channels)[None, :]
    table = np.concatenate([np.sin(angle), np.sin(angle + np.pi / 2)], axis=1).astype(np.float32)
    return table.astype(np.float16).astype(np.float32) if fp16_rounded else table


def _matching_formula(stored: np.ndarray) -> tuple[bool, float] | None:
    """(fp16_rounded, max diff) of the formula `stored` equals, or None. The exact check is
    against what the graph computes (sin-only), so a replaced table is the same bit for bit."""
    rows, channels = stored.shape
    rounded = float(np.abs(stored - graph_table(rows, channels, True)).max())
    if rounded == 0.0:
        return True, rounded
    plain = float(np.abs(stored - graph_table(rows, channels, False)).max())
    return (False, plain) if plain <= FLOAT_TOLERANCE else None


def compute_sinusoid_tables(proto: onnx.ModelProto) -> list[ComputedTable]:
    """Replace every 2-D float initializer that equals the Whisper sinusoid table by the constant
    subgraph computing it (in place, on a proto we own). Returns what was replaced."""
    from onnx import TensorProto, helper, numpy_helper

    done: list[ComputedTable] = []
    used = {name for node in proto.graph.node for name in node.input}
    for init in list(proto.graph.initializer):
        if (init.data_type != TensorProto.FLOAT or len(init.dims) != 2 or init.dims[0] < 64
                or init.dims[1] % 2 or init.dims[1] < 4 or init.name not in used):
            continue
        match = _matching_formula(numpy_helper.to_array(init))
        if match is None:
            continue
        fp16_rounded, diff = match
        rows, channels = int(init.dims[0]), int(init.dims[1])
        p = f"{init.name}__formula"
        consts = [numpy_helper.from_array(inv_timescales(channels)[None, :], f"{p}_inv"),
                  numpy_helper.from_array(np.array(0.0), f"{p}_start"),
                  numpy_helper.from_array(np.array(float(rows)), f"{p}_rows"),
                  numpy_helper.from_array(np.array(1.0), f"{p}_step"),
                  numpy_helper.from_array(np.array(np.pi / 2), f"{p}_quarter"),
                  numpy_helper.from_array(np.array([1], dtype=np.int64), f"{p}_axis1")]
        nodes = [
            helper.make_node("Range", [f"{p}_start", f"{p}_rows", f"{p}_step"], [f"{p}_t"],
                             name=f"{p}_range"),
            helper.make_node("Unsqueeze", [f"{p}_t", f"{p}_axis1"], [f"{p}_col"],
                             name=f"{p}_unsqueeze"),
            helper.make_node("Mul", [f"{p}_col", f"{p}_inv"], [f"{p}_angle"], name=f"{p}_mul"),
            helper.make_node("Sin", [f"{p}_angle"], [f"{p}_sin"], name=f"{p}_sin"),
            helper.make_node("Add", [f"{p}_angle", f"{p}_quarter"], [f"{p}_shifted"],
                             name=f"{p}_shift"),
            helper.make_node("Sin", [f"{p}_shifted"], [f"{p}_cos"], name=f"{p}_cos"),
            helper.make_node("Concat", [f"{p}_sin", f"{p}_cos"], [f"{p}_f64"], axis=1,
                             name=f"{p}_concat")]
        # float64 -> float32 -> fp16, as torch's .to(float16) rounds a float64 tensor (through
        # float32; a direct float64 -> fp16 rounding differs on ~19 of the 576,000 entries)
        nodes.append(helper.make_node("Cast", [f"{p}_f64"], [f"{p}_f32"], to=TensorProto.FLOAT,
                                      name=f"{p}_to_fp32"))
        if fp16_rounded:
            nodes += [helper.make_node("Cast", [f"{p}_f32"], [f"{p}_f16"],
                                       to=TensorProto.FLOAT16, name=f"{p}_to_fp16"),
                      helper.make_node("Cast", [f"{p}_f16"], [init.name], to=TensorProto.FLOAT,
                                       name=f"{p}_fp16_to_fp32")]
        else:
            nodes.append(helper.make_node("Identity", [f"{p}_f32"], [init.name],
                                          name=f"{p}_out"))
        proto.graph.initializer.remove(init)
        proto.graph.initializer.extend(consts)
        for offset, node in enumerate(nodes):
            proto.graph.node.insert(offset, node)
        done.append(ComputedTable(init.name, rows, channels, fp16_rounded, diff,
                                  4 * rows * channels))
    return done


def bytes_priced_elsewhere(computed: list[ComputedTable] | tuple[ComputedTable, ...],
                           state_dict_keys: set[str]) -> int:
    """Bytes of computed tables that `workbench.size` still prices: it reads the state dict, so
    a table kept as a persistent buffer is in its prediction but not in our file; a
    non-persistent buffer (not saved, recomputed by the model) is in neither."""
    return sum(t.bytes_saved for t in computed if t.initializer in state_dict_keys)

