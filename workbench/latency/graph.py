"""What a deployment runtime runs: the traced aten graph of a model, after the runtime's fusions.

    ops = fused_ops(model, make_inputs(seconds))            # one forward pass, batch 1
    ops[0] -> FusedOp(kind="conv", macs=..., weight_elems=..., path="stem.0", ...)

How: the model (a deep copy in eval mode; the caller's model is never touched) runs once under a
`TorchDispatchMode` that sees every aten op after autograd. Each tensor is tagged "activation" when
it derives from the inputs, "static" when it derives only from parameters / buffers / constants:

- a product (mm, addmm, bmm, convolution) with one static operand is a weight layer
  (`gemm` for Linear and 1x1 convolution, `conv` for dense k x k, `dwconv` for depthwise);
- a product of two activations is attention (`attention`: Q K^T and A V, found in the graph,
  whatever the module's attribute names); fused SDPA kernels are attention too;
- what follows a weight layer and reads only its output (bias add, batch norm in inference mode,
  ReLU / ReLU6 / GELU / SiLU / hardswish / sigmoid, a multiply by a constant) is fused into it,
  as every deployment runtime does (conv+BN+activation, matmul+bias+activation);
- softmax / scaling / masking of an attention score matrix is fused into the attention op;
- views, reshapes and transposes are free; everything else that writes an activation (layer norm,
  residual add, pooling, copies) is an `elementwise` op priced by the bytes it moves.

Each op also carries the module path it ran in (innermost module), so per-layer weight bits of a
plan (a bits mapping or a CompressionPlan) apply to it.
"""
from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.weak import WeakTensorKeyDictionary

from workbench.errors import WorkbenchError

aten = torch.ops.aten

#: Op kinds the cost model prices.
KINDS = ("gemm", "conv", "dwconv", "attention", "elementwise")

_VIEWS = {"view", "_unsafe_view", "reshape", "transpose", "permute", "expand", "t", "slice",
          "select", "unsqueeze", "squeeze", "as_strided", "detach", "alias", "split",
          "split_with_sizes", "unbind", "chunk", "narrow", "lift_fresh", "flatten",
          "unflatten", "view_as", "expand_as", "_reshape_alias", "contiguous", "numpy_T",
          "sym_size", "sym_stride", "sym_numel", "is_same_size", "size", "stride", "dim",
          "_local_scalar_dense", "item", "empty", "zeros", "ones", "full", "arange",
          "scalar_tensor",
          "empty_like", "zeros_like", "ones_like", "new_zeros", "new_ones", "new_empty", "fill",
          "lift", "_to_copy_noop", "masked_fill_mask"}
#: Elementwise ops a runtime fuses into the weight layer that produced their input.
_FUSABLE_EPILOGUE = {"add", "relu", "relu_", "hardtanh", "hardtanh_", "gelu", "silu", "silu_",
                     "hardswish", "hardswish_", "sigmoid", "clamp", "clamp_min", "clamp_max",
                     "_native_batch_norm_legit_no_training", "native_batch_norm",
                     "_native_batch_norm_legit", "batch_norm", "mul", "leaky_relu", "elu",
                     "tanh", "threshold"}
#: Ops a runtime fuses into the attention op that produced their input.
_ATTENTION_EPILOGUE = {"_softmax", "softmax", "mul", "div", "add", "masked_fill", "where",
                       "_safe_softmax", "clone"}


@dataclass(frozen=True)
class FusedOp:
    """One op as a runtime runs it (batch 1). Elements are counts, not bytes (the cost model
    applies the precision the runtime executes the op in)."""

    kind: str                 # one of KINDS
    path: str                 # innermost module the op ran in ("" = the top module)
    macs: int                 # multiply-accumulates (0 for elementwise)
    weight_elems: int         # static operand elements (weights + bias)
    in_elems: int             # activation elements read
    out_elems: int            # activation elements written
    fused: tuple[str, ...] = ()   # aten ops folded into this one (bias, BN, activation, softmax)


def fused_ops(model: nn.Module, inputs: Sequence[Any]) -> list[FusedOp]:
    """The ops a runtime runs for `model(*inputs)`, fused (module docstring)."""
    if not isinstance(model, nn.Module):
        raise WorkbenchError(f"model: expected a torch.nn.Module, got {type(model).__name__}.")
    model = copy.deepcopy(model).eval()
    names = {m: n for n, m in model.named_modules()}
    stack: list[str] = []

    def pre(module: nn.Module, args: Any) -> None:
        stack.append(names.get(module, stack[-1] if stack else ""))

    def post(module: nn.Module, args: Any, out: Any) -> None:
        if stack:
            stack.pop()

    tracer = _Tracer(lambda: stack[-1] if stack else "")
    with torch.no_grad():
        inputs = tuple(inputs)
        for t in tree_flatten(inputs)[0]:
            if isinstance(t, torch.Tensor):
                tracer.activation[t] = True
        h1 = nn.modules.module.register_module_forward_pre_hook(pre)
        h2 = nn.modules.module.register_module_forward_hook(post)
        try:
            with tracer:
                model(*inputs)
        finally:
            h1.remove()
            h2.remove()
    return [op.freeze() for op in tracer.ops]


class _Op:
    def __init__(self, kind: str, path: str, macs: int, weight: int, inp: int, out: int,
                 name: str) -> None:
        self.kind, self.path, self.macs, self.weight = kind, path, macs, weight
        self.inp, self.out, self.fused = inp, out, [name]

    def freeze(self) -> FusedOp:
        return FusedOp(self.kind, self.path, int(self.macs), int(self.weight), int(self.inp),
                       int(self.out), tuple(self.fused))


class _Tracer(TorchDispatchMode):
    def __init__(self, where: Callable[[], str]) -> None:
        super().__init__()
        self.where = where
        self.activation = WeakTensorKeyDictionary()
        self.producer = WeakTensorKeyDictionary()   # activation tensor -> _Op that wrote it
        self.ops: list[_Op] = []

    def _is_act(self, t: Any) -> bool:
        return isinstance(t, torch.Tensor) and self.activation.get(t, False)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        name = func.overloadpacket.__name__
        flat_in = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)]
        acts = [t for t in flat_in if self._is_act(t)]
        flat_out = [t for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor)]
        if not acts:
            return out                       # static (weights, constants): not the runtime's work
        for t in flat_out:
            self.activation[t] = True
        if name.endswith("_") and flat_in:   # in-place: the first argument became an activation
            self.activation[flat_in[0]] = True
        if name in _VIEWS or not flat_out:
            for t in flat_out:               # a view keeps its producer (fusion sees through it)
                p = self.producer.get(acts[0])
                if p is not None:
                    self.producer[t] = p
            return out
        op = self._classify(func, name, args, flat_in, acts, flat_out)
        for t in flat_out:
            self.producer[t] = op
        return out

    def _classify(self, func, name: str, args: tuple, flat_in: list, acts: list,
                  flat_out: list) -> _Op:
        path = self.where()
        out_elems = flat_out[0].numel()
        static = [t for t in flat_in if not self._is_act(t)]
        static_elems = sum(t.numel() for t in static)
        in_elems = sum(t.numel() for t in acts)
        if name == "convolution":
            x, w = args[0], args[1]
            groups = args[8] if len(args) > 8 else 1
            k = math.prod(w.shape[2:])
            transposed = bool(args[6]) if len(args) > 6 else False
            # w: (C_out, C_in / groups, *kernel); transposed: (C_in, C_out / groups, *kernel)
            macs = (x.numel() if transposed else out_elems) * w.shape[1] * k
            if self._is_act(w):
                return self._new("attention", path, macs, 0, in_elems, out_elems, name)
            if groups > 1 and w.shape[1] == 1:
                kind = "dwconv"
            elif k == 1 and groups == 1:
                kind = "gemm"
            else:
                kind = "conv"
            return self._new(kind, path, macs, static_elems, x.numel(), out_elems, name)
        if name in ("mm", "addmm", "bmm", "baddbmm", "matmul", "dot", "mv", "addmv"):
            bias_first = name in ("addmm", "baddbmm", "addmv")
            a, b = (args[1], args[2]) if bias_first else (args[0], args[1])
            macs = out_elems * a.shape[-1]
            if self._is_act(a) and self._is_act(b):
                p = self._attention_parent(acts)
                if p is not None:                # A V of the same attention: one fused op
                    p.macs += macs
                    p.out = out_elems
                    p.fused.append(name)
                    return p
                return self._new("attention", path, macs, 0, in_elems, out_elems, name)
            act = a if self._is_act(a) else b
            return self._new("gemm", path, macs, static_elems, act.numel(), out_elems, name)
        if "scaled_dot_product" in name:
            q, k = args[0], args[1]
            # (B, H, L, E) x (B, H, S, E): Q K^T and A V, L*S*E MACs each per head
            macs = 2 * q.numel() * k.shape[-2]
            return self._new("attention", path, macs, 0, in_elems, q.numel(), name)
        # elementwise: fuse into the producer when the runtime would (small static operands
        # only: a bias, BN statistics, a scale; not a second activation from elsewhere)
        producers = {id(p): p for t in acts if (p := self.producer.get(t)) is not None}
        shape = flat_out[0].shape
        channels = max(shape[1] if len(shape) > 1 else 1, shape[-1] if len(shape) else 1)
        if (len(producers) == 1 and len(acts) == sum(1 for t in acts if self.producer.get(t))
                and static_elems <= 4 * channels):
            p = next(iter(producers.values()))
            if p.kind in ("gemm", "conv", "dwconv") and name in _FUSABLE_EPILOGUE:
                p.fused.append(name)
                p.weight += static_elems
                return p
            if p.kind == "attention" and name in _ATTENTION_EPILOGUE:
                p.fused.append(name)
                return p
        return self._new("elementwise", path, 0, static_elems, in_elems, out_elems, name)

    def _attention_parent(self, acts: list) -> _Op | None:
        for t in acts:
            p = self.producer.get(t)
            last = self.ops[-1] if self.ops else None
            if p is not None and p.kind == "attention" and p is last:
                return p
        return None

    def _new(self, kind: str, path: str, macs: int, weight: int, inp: int, out: int,
             name: str) -> _Op:
        op = _Op(kind, path, macs, weight, inp, out, name)
        self.ops.append(op)
        return op


def ops_at_scale(ops: Sequence[FusedOp], s: float) -> list[FusedOp]:
    """Ops of the same model on an input `s` times longer (sequence models): work and
    activations grow with s, attention with s^2 (its output with s); weights stay, except
    per-position static operands of elementwise ops (a positional embedding slice). Exact at
    whole multiples for models without length-dependent rounding beyond their strides."""
    out = []
    for op in ops:
        if op.kind == "attention":
            out.append(replace(op, macs=round(op.macs * s * s), in_elems=round(op.in_elems * s),
                               out_elems=round(op.out_elems * s)))
        elif op.kind == "elementwise":
            static = op.weight_elems
            per_position = static and static >= op.out_elems
            out.append(replace(op, in_elems=round(op.in_elems * s),
                               out_elems=round(op.out_elems * s),
                               weight_elems=round(static * s) if per_position else static))
        else:
            out.append(replace(op, macs=round(op.macs * s), in_elems=round(op.in_elems * s),
                               out_elems=round(op.out_elems * s)))
    return out
