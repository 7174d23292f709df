"""Store a tied embedding once: a Gather whose table is the transpose of a MatMul weight of the
same graph (Whisper's input embedding and its tied output projection) reads its rows from the
weight that MatMul stores, in whatever form the quantizers left it.

    pairs = tied_pairs(proto)                 # [(Gather node, MatMul weight name)], by value
    left = share_tied_embedding(proto, pairs) # after quantization; in place; [reasons] for the
                                              # Gathers it could not rewire

Storage forms read (each produced by the export's quantizers, workbench.export.ort_quantize):
    fp32                 the MatMul's own initializer B (k, V)
    fp16                 B_fp16 + Cast (export.weight_grids.replace_with_fp16_weights)
    int8 (ORT dynamic)   B_quantized, B_scale, B_zero_point: per channel (V,) or per tensor ()
    MatMulNBits 2/4/8    B_q{bits}_B (V, blocks, blob) uint8, low bits first; _scales (V,
                         blocks); optional _zero_points packed (V, ceil(blocks * bits / 8)),
                         else the symmetric zero point 2^(bits - 1) (ORT's contrib op spec)

Token ids (B, L) pick columns of the stored (k, V) weight (Gather axis 1 -> (k, B, L), then
Transpose -> (B, L, k)), dequantized in the graph: the embedding rows are exactly the values the
projection multiplies by.
"""
from __future__ import annotations

import hashlib
from typing import Any

import numpy as np

from workbench.onnx_tools.graph_map import drop_unused_initializers


def value_key(array: np.ndarray) -> str:
    """A key of an array's shape and float32 values (equal arrays, equal keys)."""
    a = np.ascontiguousarray(array, dtype=np.float32)
    return hashlib.sha1(repr(a.shape).encode() + a.tobytes()).hexdigest()


def tied_pairs(proto) -> list[tuple[str, str]]:
    """(Gather node, MatMul weight name) pairs where the Gather's table T (V, k) is the transpose
    of a MatMul weight B (k, V) of the same graph: Whisper's input embedding and its tied output
    projection (or, for a low-rank projection, the `up` factor)."""
    from onnx import numpy_helper
    inits = {i.name: i for i in proto.graph.initializer}
    by_key: dict[str, str] = {}
    for node in proto.graph.node:
        if node.op_type == "MatMul" and len(node.input) > 1 and node.input[1] in inits:
            b = numpy_helper.to_array(inits[node.input[1]])
            if b.ndim == 2:
                by_key.setdefault(value_key(b.T), node.input[1])
    out = []
    for node in proto.graph.node:
        if node.op_type == "Gather" and node.input[0] in inits:
            t = numpy_helper.to_array(inits[node.input[0]])
            if t.ndim == 2 and t.dtype == np.float32 and value_key(t) in by_key:
                out.append((node.name, by_key[value_key(t)]))
    return out


class _Nodes:
    """New nodes and constant initializers named under one prefix (ONNX helper shorthand)."""

    def __init__(self, prefix: str) -> None:
        self.prefix, self.nodes, self.consts = prefix, [], {}

    def __call__(self, op: str, inputs: list[str], **attrs: Any) -> str:
        from onnx import helper
        name = f"{self.prefix}/{op}_{len(self.nodes)}"
        self.nodes.append(helper.make_node(op, inputs, [name + "_out"], name=name, **attrs))
        return name + "_out"

    def const(self, name: str, value: Any) -> str:
        from onnx import numpy_helper
        self.consts[name] = numpy_helper.from_array(np.asarray(value), f"{self.prefix}/{name}")
        return f"{self.prefix}/{name}"


def _nbits_rows(node: _Nodes, proto, inits: dict, base: str, bits: int, ids: str) -> str:
    """Rows (B, L, K) of a MatMulNBits weight: B (N, blocks, blob) uint8 packed low bits first,
    scales (N, blocks), optional packed zero points (N, ceil(blocks * bits / 8)), else the
    symmetric zero point 2^(bits - 1); K trims the padding of the last block."""
    from onnx import TensorProto, numpy_helper
    blocks = numpy_helper.to_array(inits[f"{base}_scales"]).shape[1]
    mm = next(n for n in proto.graph.node if n.op_type == "MatMulNBits"
              and n.input[1] == f"{base}_B")
    k = next(a.i for a in mm.attribute if a.name == "K")
    last = node.const("last", np.int64([-1]))

    def unpack(packed: str) -> str:
        """uint8 (a, b, c, m) -> int32 codes (a, b, c, m * 8 / bits), low bits first."""
        x = node("Cast", [packed], to=TensorProto.INT32)
        parts = [node("Unsqueeze", [node("Mod", [
            node("Div", [x, node.const(f"shift{j}", np.int32(2 ** (bits * j)))]),
            node.const("levels", np.int32(2 ** bits))]), last]) for j in range(8 // bits)]
        y = node("Concat", parts, axis=-1) if len(parts) > 1 else parts[0]
        return node("Reshape", [y, node.const("flat_last", np.int64([0, 0, 0, -1]))])

    codes = unpack(node("Gather", [f"{base}_B", ids], axis=0))            # (B, L, nb, block)
    if f"{base}_zero_points" in inits:
        zp = unpack(node("Unsqueeze", [node("Gather", [f"{base}_zero_points", ids], axis=0),
                                       node.const("axis2", np.int64([2]))]))
        zp = node("Slice", [zp, node.const("zero", np.int64([0])),
                            node.const("blocks", np.int64([blocks])),
                            node.const("axis3", np.int64([3]))])            # (B, L, 1, nb)
        zp = node("Transpose", [node("Cast", [zp], to=TensorProto.FLOAT)], perm=[0, 1, 3, 2])
    else:
        zp = node.const("zero_point", np.float32(2 ** (bits - 1)))
    scale = node("Unsqueeze", [node("Gather", [f"{base}_scales", ids], axis=0), last])
    values = node("Mul", [node("Sub", [node("Cast", [codes], to=TensorProto.FLOAT), zp]), scale])
    flat = node("Reshape", [values, node.const("flat_blocks", np.int64([0, 0, -1]))])
    return node("Slice", [flat, node.const("zero", np.int64([0])), node.const("k", np.int64([k])),
                          node.const("axis2", np.int64([2]))])


def _rows(node: _Nodes, proto, inits: dict, b: str, ids: str) -> str | None:
    """Output name of the rows `ids` of the stored form of MatMul weight `b` (k, V), as
    (B, L, k) float32 on the projection's own values; None for a format not handled here."""
    from onnx import TensorProto

    def columns(weight: str) -> str:                                        # (k, B, L) float
        return node("Cast", [node("Gather", [weight, ids], axis=1)], to=TensorProto.FLOAT)

    if b in inits:                                                          # fp32, unplanned
        return node("Transpose", [node("Gather", [b, ids], axis=1)], perm=[1, 2, 0])
    if f"{b}_fp16" in inits:
        return node("Transpose", [columns(f"{b}_fp16")], perm=[1, 2, 0])
    if f"{b}_quantized" in inits:                                           # ORT int8 dynamic
        def per_token(name: str) -> str:             # per channel: (V,) -> (B, L); per tensor: ()
            return node("Gather", [name, ids], axis=0) if inits[name].dims else name
        zp = node("Cast", [per_token(f"{b}_zero_point")], to=TensorProto.FLOAT)
        scale = per_token(f"{b}_scale")
        return node("Transpose", [node("Mul", [node("Sub", [columns(f"{b}_quantized"), zp]),
                                               scale])], perm=[1, 2, 0])
    for bits in (2, 4, 8):
        if f"{b}_q{bits}_B" in inits:
            return _nbits_rows(node, proto, inits, f"{b}_q{bits}", bits, ids)
    return None


def share_tied_embedding(proto, pairs: list[tuple[str, str]]) -> list[str]:
    """Let each Gather of `pairs` read its rows from the weight its MatMul stores after
    quantization (fp32, fp16, ORT int8 per channel, MatMulNBits), so the tied table is stored
    once, and drop the Gather's own table (in place). Returns the Gathers left with their own
    table (a storage format this function cannot read), each with the reason.

    Token ids (B, L) pick columns of the stored (k, V) weight (Gather axis 1 -> (k, B, L), then
    Transpose -> (B, L, k)); the values are the ones the projection multiplies by, i.e. the
    simulation's rounded weight."""
    inits = {i.name: i for i in proto.graph.initializer}
    left = []
    for gather_name, b in pairs:
        index = next(i for i, n in enumerate(proto.graph.node) if n.name == gather_name)
        gather = proto.graph.node[index]
        node = _Nodes(f"{gather_name}_tied")
        if _rows(node, proto, inits, b, gather.input[1]) is None:
            left.append(f"{gather_name}: its projection's weight '{b}' is stored in a format "
                        f"the Gather cannot read; the table stays separate (fp32)")
            continue
        node.nodes[-1].output[0] = gather.output[0]
        del proto.graph.node[index]
        for offset, n in enumerate(node.nodes):
            proto.graph.node.insert(index + offset, n)
        proto.graph.initializer.extend(node.consts.values())
    drop_unused_initializers(proto)
    return left
