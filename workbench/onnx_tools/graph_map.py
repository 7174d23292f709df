"""Which ONNX nodes hold which layer's weights: module paths from the exporter's name scopes.

Node names in a dynamo export are opaque ("node_MatMul_29"); `exporter` keeps each node's
module path in its metadata (`MODULE_KEY`). A plan layer "blocks.0.mlp.fc1" owns the weight
nodes whose module is that path or lies under it (a low-rank Linear exports as two MatMuls,
"blocks.0.mlp.fc1.down" and "blocks.0.mlp.fc1.up"). Only nodes whose weight is a constant
(an initializer) count: attention's score MatMuls multiply two activations.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING

from workbench.onnx_tools.exporter import node_module

if TYPE_CHECKING:
    import onnx

#: Op types that carry a Linear's weight, and a Conv's.
LINEAR_OPS = ("MatMul",)  # our exports give MatMul + Add (3-D inputs), never Gemm
CONV_OPS = ("Conv",)


@dataclass(frozen=True)
class WeightNode:
    """A node multiplying by a constant weight: ONNX node name, op, module path, the names of
    its weight initializer and of its activation input."""

    name: str
    op_type: str
    module: str
    weight: str
    activation: str


def weight_nodes(proto: onnx.ModelProto) -> list[WeightNode]:
    """Every MatMul / Conv node whose weight input (input 1) is an initializer."""
    inits = {i.name for i in proto.graph.initializer}
    out = []
    for node in proto.graph.node:
        if node.op_type not in LINEAR_OPS + CONV_OPS or len(node.input) < 2:
            continue
        module = node_module(node)
        if module is not None and node.input[1] in inits:
            out.append(WeightNode(node.name, node.op_type, module, node.input[1], node.input[0]))
    return out


def nodes_of_layer(nodes: list[WeightNode], path: str, kind: str) -> list[WeightNode]:
    """The weight nodes of plan layer `path` of kind "linear" or "conv"."""
    ops = LINEAR_OPS if kind == "linear" else CONV_OPS
    # or by the weight's own name: a conv followed by a BatchNorm is fused by the exporter's
    # optimizer into one Conv that carries the norm's scope but keeps the conv's weight name
    # (measured on torchaudio's Conformer conv module: "...sequential.3" holding
    # "...sequential.2.weight")
    return [n for n in nodes if n.op_type in ops
            and (n.module == path or n.module.startswith(path + ".")
                 or n.weight.startswith(path + "."))]


def op_counts(proto: onnx.ModelProto) -> dict[str, int]:
    """How many nodes of each op type the graph holds (sorted by op; before ORT's fusions)."""
    return dict(sorted(Counter(n.op_type for n in proto.graph.node).items()))


def drop_unused_initializers(proto: onnx.ModelProto) -> None:
    """Remove initializers no node reads (weights a rewrite replaced)."""
    used = {name for node in proto.graph.node for name in node.input}
    used |= {o.name for o in proto.graph.output}
    keep = [i for i in proto.graph.initializer if i.name in used]
    del proto.graph.initializer[:]
    proto.graph.initializer.extend(keep)
