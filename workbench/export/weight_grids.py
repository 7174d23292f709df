"""Write a layer's weights on exactly the grid the workbench simulated, in ONNX Runtime's layouts.

The grid comes from `workbench.compress.quantize.fake_quant_weight` applied to the exported fp32
weight, the same function (same input) `compress` uses, so the runtime weights equal the
simulated ones bit for bit. Three layouts:

- MatMulNBits (com.microsoft, onnxruntime contrib op): B (N, k_blocks, block_size * bits / 8)
  uint8, K split in blocks along each output column, element k of a block in bits
  [(k % per_byte) * bits, ...) of byte k // per_byte (little end first); scales (N, k_blocks)
  float32; zero points (N, ceil(k_blocks * bits / 8)) uint8 packed the same way, absent for a
  symmetric grid (the runtime then uses 2^(bits-1)). A per-channel or per-tensor grid is written
  with the same scale in every block of a column (block size: the largest power of two <= 256
  dividing K, so nothing is padded).
- int8 / int4 weights + DequantizeLinear (per output channel, axis 0; int4 needs opset 21)
  in front of an fp32 Conv.
- fp16 weights + Cast to float32.

Shapes: ONNX MatMul weights are (K, N) = W^T of torch's (out=N, in=K).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from workbench.compress.quantize import BLOCK_SIZE, fake_quant_weight, grouped

if TYPE_CHECKING:
    import onnx

#: MatMulNBits block sizes the CPU kernels handle (powers of two, 16..256).
MAX_NBITS_BLOCK = 256


@dataclass(frozen=True)
class Grid:
    """Integer codes of a weight on its grid, and the per-element scale and zero point."""

    codes: np.ndarray        # (out, K) int64: signed if symmetric, else unsigned 0..2^b - 1
    scale: np.ndarray        # (out, K) float32, the scale of each element's group
    zero_point: np.ndarray   # (out, K) int64, 0 for symmetric grids
    dequantized: np.ndarray  # (out, K) float32 == what `compress` puts in the fake-quant layer
    bits: int
    symmetric: bool


def plan_grid(weight: np.ndarray, bits: int, granularity: str, symmetric: bool) -> Grid:
    """The grid `compress` puts `weight` (out, ...) on, flattened to (out, K)."""
    w = torch.from_numpy(np.array(weight, dtype=np.float32))  # a writable copy
    out = w.shape[0]
    w2 = w.reshape(out, -1)
    deq, scale, zero_point = fake_quant_weight(w2, bits, granularity, symmetric)
    k = w2.shape[1]
    # Broadcast the group scale / zero point back to every element, through the same grouping.
    groups = grouped(w2, granularity)
    per_group = groups.shape[0]
    s = scale.reshape(-1).float()
    z = zero_point.reshape(-1).to(torch.int64)
    if s.numel() == 1 and per_group == 1:
        s_el, z_el = s.expand(out, k), z.expand(out, k)
    else:
        width = groups.shape[1]
        s_el = s[:, None].expand(per_group, width).reshape(out, -1)[:, :k]
        z_el = z[:, None].expand(per_group, width).reshape(out, -1)[:, :k]
    deq2 = deq.reshape(out, k)
    codes = torch.round(deq2.double() / s_el.double()).to(torch.int64) + z_el
    return Grid(codes.numpy(), s_el.contiguous().numpy(), z_el.contiguous().numpy(),
                deq2.numpy().astype(np.float32), bits, symmetric)


def nbits_block_size(k: int, granularity: str) -> int:
    """MatMulNBits block size: 32 for a per-block grid (the plan's), else the largest power of
    two <= 256 that divides K (per-channel scales then repeat in each block, nothing is padded)."""
    if granularity == "per_block":
        return BLOCK_SIZE
    size = MAX_NBITS_BLOCK
    while size > 16 and k % size:
        size //= 2
    return size


def _pack(values: np.ndarray, bits: int, pad: int = 0) -> np.ndarray:
    """(..., n) unsigned codes < 2^bits -> (..., ceil(n * bits / 8)) uint8, low bits first;
    the unused slots of the last byte hold `pad`."""
    per_byte = 8 // bits
    n = values.shape[-1]
    padded = np.full(values.shape[:-1] + (-(-n // per_byte) * per_byte,), pad, dtype=np.uint16)
    padded[..., :n] = values
    shaped = padded.reshape(values.shape[:-1] + (-1, per_byte))
    out = np.zeros(shaped.shape[:-1], dtype=np.uint16)
    for i in range(per_byte):
        out |= shaped[..., i] << (i * bits)
    return out.astype(np.uint8)


def matmul_nbits_arrays(grid: Grid, block_size: int
                        ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """(B (N, k_blocks, blob) uint8, scales (N, k_blocks) float32, zero points or None)."""
    n, k = grid.codes.shape
    bits = grid.bits
    k_blocks = -(-k // block_size)
    offset = 2 ** (bits - 1) if grid.symmetric else 0
    stored = grid.codes + offset
    assert stored.min() >= 0 and stored.max() < 2 ** bits, "codes outside the b-bit range"
    pad_code = offset if grid.symmetric else grid.zero_point[:, -1:]
    full = np.empty((n, k_blocks * block_size), dtype=np.int64)
    full[:, :k] = stored
    full[:, k:] = pad_code
    b = _pack(full.reshape(n, k_blocks, block_size), bits)
    first = np.arange(k_blocks) * block_size          # first element of every block
    for start in first:                                # a block must hold a single scale
        stop = min(start + block_size, k)
        if not (np.all(grid.scale[:, start:stop] == grid.scale[:, start:start + 1])
                and np.all(grid.zero_point[:, start:stop] == grid.zero_point[:, start:start + 1])):
            raise ValueError(f"block size {block_size} mixes scales of different groups")
    scales = np.ascontiguousarray(grid.scale[:, first], dtype=np.float32)
    # Unused zero-point slots hold 2^(bits-1), as ONNX Runtime's own quantizer writes them.
    zero_points = None if grid.symmetric else _pack(grid.zero_point[:, first], bits,
                                                    pad=2 ** (bits - 1))
    return b, scales, zero_points


def replace_with_matmul_nbits(proto: onnx.ModelProto, node: onnx.NodeProto, weight: np.ndarray,
                              bits: int, granularity: str, symmetric: bool) -> Grid:
    """Swap MatMul `node` (input 1 = weight (K, N)) for MatMulNBits on the plan grid (in place)."""
    from onnx import helper, numpy_helper

    grid = plan_grid(weight.T, bits, granularity, symmetric)
    k = weight.shape[0]
    block = nbits_block_size(k, granularity)
    b, scales, zps = matmul_nbits_arrays(grid, block)
    base = f"{node.input[1]}_q{bits}"
    inits = [numpy_helper.from_array(b, f"{base}_B"),
             numpy_helper.from_array(scales, f"{base}_scales")]
    inputs = [node.input[0], f"{base}_B", f"{base}_scales"]
    if zps is not None:
        inits.append(numpy_helper.from_array(zps, f"{base}_zero_points"))
        inputs.append(f"{base}_zero_points")
    new = helper.make_node("MatMulNBits", inputs, list(node.output), name=f"{node.name}_Q{bits}",
                           domain="com.microsoft", K=k, N=weight.shape[1], bits=bits,
                           block_size=block)
    new.metadata_props.extend(node.metadata_props)
    _swap_node(proto, node, [new])
    proto.graph.initializer.extend(inits)
    return grid


def replace_with_dq_weights(proto: onnx.ModelProto, node: onnx.NodeProto, weight: np.ndarray,
                           bits: int, granularity: str, symmetric: bool) -> Grid:
    """Store Conv `node`'s weight (out, in/groups, k...) as int8 / int4 (uint8 / uint4 if
    asymmetric) + DequantizeLinear (per output channel, axis 0; or one scale per tensor)."""
    from onnx import helper, numpy_helper

    grid = plan_grid(weight, bits, granularity, symmetric)
    per_tensor = granularity == "per_tensor"
    scale = grid.scale[0, 0] if per_tensor else grid.scale[:, 0]
    zp = grid.zero_point[0, 0] if per_tensor else grid.zero_point[:, 0]
    zp_dims = [] if per_tensor else [len(zp)]
    base = node.input[1]
    inits = [_integer_tensor(f"{base}_int{bits}", grid.codes, list(weight.shape), bits, symmetric),
             numpy_helper.from_array(np.asarray(scale, dtype=np.float32), f"{base}_scale"),
             _integer_tensor(f"{base}_zero_point", np.asarray(zp), zp_dims, bits, symmetric)]
    dq = helper.make_node("DequantizeLinear", [f"{base}_int{bits}", f"{base}_scale",
                                              f"{base}_zero_point"], [f"{base}_dequantized"],
                          name=f"{node.name}_weight_dq", axis=0)
    dq.metadata_props.extend(node.metadata_props)
    node.input[1] = f"{base}_dequantized"
    _insert_before(proto, node, dq)
    proto.graph.initializer.extend(inits)
    return grid


def _integer_tensor(name: str, values: np.ndarray, dims: list[int], bits: int, signed: bool
                    ) -> onnx.TensorProto:
    """int8 / uint8 / int4 / uint4 tensor with raw little-endian data (4-bit: two per byte, the
    first element in the low nibble, as ONNX packs INT4)."""
    from onnx import TensorProto, helper

    flat = np.asarray(values, dtype=np.int64).reshape(-1)
    if bits == 8:
        data = flat.astype(np.int8 if signed else np.uint8).tobytes()
        dtype = TensorProto.INT8 if signed else TensorProto.UINT8
    else:
        data = _pack((flat & 0xF)[None, :], 4)[0].tobytes()
        dtype = TensorProto.INT4 if signed else TensorProto.UINT4
    return helper.make_tensor(name, dtype, dims, data, raw=True)


def replace_with_fp16_weights(proto: onnx.ModelProto, node: onnx.NodeProto, weight: np.ndarray
                              ) -> None:
    """Store `node`'s weight as fp16 with a Cast back to float32 (fp32 compute)."""
    from onnx import TensorProto, helper, numpy_helper

    base = node.input[1]
    init = numpy_helper.from_array(weight.astype(np.float16), f"{base}_fp16")
    cast = helper.make_node("Cast", [f"{base}_fp16"], [f"{base}_fp32"],
                            name=f"{node.name}_weight_cast", to=TensorProto.FLOAT)
    cast.metadata_props.extend(node.metadata_props)
    node.input[1] = f"{base}_fp32"
    _insert_before(proto, node, cast)
    proto.graph.initializer.append(init)


def _index(proto: onnx.ModelProto, node: onnx.NodeProto) -> int:
    """Position of `node` in the graph (node names are unique in our exports)."""
    return next(i for i, n in enumerate(proto.graph.node) if n.name == node.name)


def _swap_node(proto: onnx.ModelProto, old: onnx.NodeProto, new: list[onnx.NodeProto]) -> None:
    index = _index(proto, old)
    del proto.graph.node[index]
    for offset, n in enumerate(new):
        proto.graph.node.insert(index + offset, n)


def _insert_before(proto: onnx.ModelProto, node: onnx.NodeProto, new: onnx.NodeProto) -> None:
    proto.graph.node.insert(_index(proto, node), new)
