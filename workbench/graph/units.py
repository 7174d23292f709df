"""Prunable units found from the recorded op graph, not from module names.

How: run the model once on an example input under a TorchDispatchMode that sees every aten op
(the same op level `torch.export` produces; `torch.fx`/`make_fx`/`torch.export` themselves
stop at data-dependent Python such as torchaudio's `int(lengths.max().item())`, which a
recording of the real run does not). Beside every activation we carry an int64 *label tensor*
of the same shape: label[pos] = the unit that position belongs to (-1 = none). Shape-only ops
(view, transpose, permute, select, split, cat, ...) are applied to the label tensor itself, so
any reshape into heads, any packed q/k/v split and any layout change is followed exactly.

A unit is born at each output row of a weight a Linear (mm/addmm with t(W)) or a Conv uses,
and its members are (parameter, dim, index) slices: W row j and bias j as producer, the next
weight's column k as consumer, per-channel norm parameters, the depthwise conv's channel.
Ops that make two units inseparable union them (union-find):
    elementwise op of two labelled tensors   aligned positions (gated FFN: act(A) * G)
    glu(dim)                                  value channel c with gate channel c + C
    softmax / norm / reduction over a dim     every unit along that dim (layer norm over the
                                              channels -> one unit -> nothing prunable)
    attention (sdpa, bmm of two activations)  every unit of q, k, v in one (batch x head)
                                              slice -> one unit per head
    a parameter index used by two units       those units (shared and tied weights)
A unit is *blocked* (cannot be removed) when it reaches the model output, when an op the
tracer does not know touches it (the op is named in the reason), or when it meets a weight
computed at run time (weight norm): a group is refused with that reason, never guessed.
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

#: Ops whose output positions are a rearrangement (or copy) of their inputs' positions: the
#: same op is applied to the label tensors.
_VIEW = {"view", "_unsafe_view", "reshape", "transpose", "permute", "unsqueeze", "squeeze",
         "select", "slice", "expand", "clone", "contiguous", "t", "unflatten", "split",
         "split_with_sizes", "chunk", "unbind", "alias", "detach", "flatten", "_reshape_alias",
         "narrow", "index_select", "repeat", "cat", "stack", "lift_fresh_copy", "lift_fresh",
         "constant_pad_nd", "movedim", "expand_as", "view_as", "index", "roll", "flip",
         "_unsafe_index", "unfold", "repeat_interleave", "pad"}
#: Elementwise ops (output = broadcast of inputs, position by position).
_ELEMENTWISE = {"silu", "gelu", "relu", "sigmoid", "tanh", "exp", "log", "sqrt", "rsqrt", "neg",
                "abs", "pow", "mul", "div", "add", "sub", "native_dropout", "dropout", "clamp",
                "clamp_min", "clamp_max", "hardtanh", "leaky_relu", "elu", "where",
                "masked_fill", "softplus", "erf", "ge", "gt", "le", "lt", "eq", "ne",
                "logical_not", "logical_and", "logical_or", "bitwise_not", "reciprocal", "sign",
                "square", "mish", "hardswish", "hardsigmoid", "rsub", "maximum", "minimum",
                "lerp", "addcmul", "addcdiv", "threshold", "silu_", "gelu_", "relu_", "add_",
                "mul_", "div_", "sub_", "masked_fill_", "clamp_", "tanh_", "sigmoid_",
                "_to_copy", "to", "type_as", "fill_", "zero_", "erfinv", "sin", "cos",
                "isnan", "isinf", "nan_to_num", "exp2", "log1p", "expm1", "floor", "ceil",
                "round", "trunc", "frac", "fmod", "remainder", "copy", "_softmax_backward_data"}
#: Ops whose output does not depend on the values of their tensor inputs.
_NO_DEPENDENCY = {"zeros_like", "ones_like", "empty_like", "full_like", "new_zeros", "new_ones",
                  "new_empty", "new_full", "arange", "empty", "zeros", "ones", "full",
                  "scalar_tensor", "rand_like", "randn_like", "empty_strided", "sym_size",
                  "sym_stride", "sym_numel", "sym_storage_offset", "is_same_size", "_assert_async",
                  "_assert_tensor_metadata"}
#: Reductions / normalisations over given dims: every unit along those dims is one unit.
_MIX_DIMS = {"_softmax", "softmax", "_log_softmax", "log_softmax", "sum", "mean", "amax", "amin",
             "var", "std", "norm", "linalg_vector_norm", "logsumexp", "max", "min", "cumsum",
             "var_mean", "std_mean", "argmax", "argmin", "prod", "any", "all"}
_SDPA = {"scaled_dot_product_attention", "_scaled_dot_product_flash_attention_for_cpu",
         "_scaled_dot_product_efficient_attention", "_scaled_dot_product_attention_math",
         "_scaled_dot_product_flash_attention", "_scaled_dot_product_cudnn_attention",
         "_scaled_dot_product_fused_attention_overrideable"}
_BATCH_NORMS = {"native_batch_norm", "_native_batch_norm_legit_no_training",
                "_native_batch_norm_legit", "batch_norm", "_batch_norm_impl_index",
                "cudnn_batch_norm", "_native_batch_norm_legit_functional"}

Member = tuple[str, int, int]  # (parameter or buffer name, dim, index)


@dataclass
class Units:
    """The outcome of one recorded run: unit classes and what blocks them."""

    members: dict[int, set[Member]] = field(default_factory=dict)  # class id -> slices
    blocked: dict[int, str] = field(default_factory=dict)          # class id -> reason
    attention: set[int] = field(default_factory=set)               # classes met in attention
    conv: set[int] = field(default_factory=set)                    # classes met in a conv
    ops: int = 0                                                   # aten ops recorded


class _UnionFind:
    def __init__(self) -> None:
        self.parent: list[int] = []

    def new(self, n: int) -> torch.Tensor:
        start = len(self.parent)
        self.parent.extend(range(start, start + n))
        return torch.arange(start, start + n, dtype=torch.long)

    def find(self, a: int) -> int:
        root = a
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[a] != root:
            self.parent[a], a = root, self.parent[a]
        return root

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)

    def union_pairs(self, a: torch.Tensor, b: torch.Tensor) -> None:
        """Union a[i] with b[i] wherever both are labels (>= 0)."""
        ok = (a >= 0) & (b >= 0) & (a != b)
        if not bool(ok.any()):
            return
        pairs = torch.unique(torch.stack([a[ok], b[ok]]), dim=1)
        for x, y in pairs.t().tolist():
            self.union(x, y)

    def union_rows(self, rows: torch.Tensor) -> torch.Tensor:
        """Union the labels of each row of a 2-D label tensor; returns one label per row
        (-1 for a row without labels)."""
        rep = rows.amax(dim=1) if rows.shape[1] else torch.full((rows.shape[0],), -1)
        self.union_pairs(rep[:, None].expand_as(rows).flatten(), rows.flatten())
        return rep

    def union_all(self, labels: torch.Tensor) -> int:
        """Union every label in `labels`; returns one of them (or -1 when there is none)."""
        found = torch.unique(labels[labels >= 0]).tolist()
        for x in found[1:]:
            self.union(found[0], x)
        return found[0] if found else -1


class _Recorder(TorchDispatchMode):
    """Carries label tensors beside the real tensors of one forward run (see module doc)."""

    def __init__(self, names: dict[int, str]) -> None:
        super().__init__()
        self.names = names            # id(parameter or buffer) -> name
        self.uf = _UnionFind()
        self.labels: dict[int, torch.Tensor] = {}
        self.weight_t: dict[int, str] = {}   # id(t(W)) -> name of W (2-D Linear weights)
        self.keep: list[torch.Tensor] = []   # strong references: ids stay unique
        self.members: list[tuple[torch.Tensor, Member]] = []
        self.blocked: dict[int, str] = {}
        self.attention: set[int] = set()
        self.conv: set[int] = set()
        self.ops = 0

    # ---- helpers -------------------------------------------------------------------------
    def lab(self, t: object) -> torch.Tensor | None:
        return self.labels.get(id(t)) if isinstance(t, torch.Tensor) else None

    def set(self, t: object, labels: torch.Tensor | None) -> None:
        if isinstance(t, torch.Tensor) and labels is not None and bool((labels >= 0).any()):
            self.keep.append(t)
            self.labels[id(t)] = labels.reshape(t.shape) if labels.shape != t.shape else labels
        elif isinstance(t, torch.Tensor):
            self.labels.pop(id(t), None)

    def member(self, labels: torch.Tensor, name: str, dim: int, index: torch.Tensor) -> None:
        """Record that unit labels[i] owns slice `index[i]` of `name` along `dim`."""
        ok = labels >= 0
        if not bool(ok.any()):
            return
        pairs = torch.unique(torch.stack([labels[ok].flatten(), index[ok].flatten()]), dim=1)
        for lab, idx in pairs.t().tolist():
            self.members.append((lab, (name, dim, idx)))

    def block(self, label: int, reason: str) -> None:
        if label >= 0:
            self.blocked.setdefault(label, reason)

    def param_members(self, p: torch.Tensor, name: str, labels: torch.Tensor) -> None:
        """Members of a parameter used position-wise beside labelled positions (broadcast)."""
        if p.dim() == 0 or p.numel() == 1:
            return
        if p.dim() != 1 and sum(s > 1 for s in p.shape) > 1:
            self.block(self.uf.union_all(labels), f"parameter {name} of shape "
                       f"{tuple(p.shape)} used element-wise")
            return
        dim = next(i for i, s in enumerate(p.shape) if s > 1)
        grid = torch.arange(p.shape[dim]).reshape([-1 if i == dim else 1
                                                   for i in range(p.dim())])
        self.member(labels, name, dim, grid.expand(p.shape).broadcast_to(labels.shape))

    # ---- dispatch -------------------------------------------------------------------------
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        self.ops += 1
        name = func.overloadpacket.__name__
        flat_in = [a for a in tree_flatten((args, kwargs))[0] if isinstance(a, torch.Tensor)]
        if name == "t" and id(args[0]) in self.names and args[0].dim() == 2:
            self.weight_t[id(out)] = self.names[id(args[0])]
            self.keep.append(out)
            return out
        tracked = [t for t in flat_in if self.lab(t) is not None]
        params = [t for t in flat_in if id(t) in self.names]
        if name in ("mm", "addmm") and id(args[-1] if name == "mm" else args[2]) in self.weight_t:
            self._linear(name, args, out)
        elif name == "convolution":
            self._conv(args, out)
        elif not tracked and not (params and name in _ELEMENTWISE | _BATCH_NORMS |
                                  {"native_layer_norm", "native_group_norm"}):
            return out
        elif name in _NO_DEPENDENCY:
            pass
        elif name in _VIEW:
            self._view(func, args, kwargs, out)
        elif name in _ELEMENTWISE:
            self._elementwise(name, args, kwargs, out, flat_in)
        elif name == "glu":
            lab = self.lab(args[0])
            a, b = lab.chunk(2, dim=args[1] if len(args) > 1 else -1)
            self.uf.union_pairs(a.flatten(), b.flatten())
            self.set(out, a.clone())
        elif name in _MIX_DIMS:
            self._mix(name, args, out)
        elif name == "native_layer_norm":
            self._layer_norm(args, out)
        elif name == "native_group_norm":
            self._group_norm(args, out)
        elif name in _BATCH_NORMS:
            self._batch_norm(args, out)
        elif name in _SDPA or name in ("bmm", "baddbmm", "mm", "matmul"):
            self._contraction(name, args, out, tracked)
        elif name == "copy_":
            self.set(out, self.lab(args[1]))
        elif name in ("index_put", "index_put_") and self.lab(args[2]) is None:
            self.set(out, self._labels_or_none(args[0]).clone())  # constant written in place
        else:
            self._unknown(name, tracked, out)
        return out

    def _unknown(self, name: str, tracked: list[torch.Tensor], out: object) -> None:
        rep = -1
        for t in tracked:
            rep = max(rep, self.uf.union_all(self.lab(t)))
            if rep >= 0:
                self.uf.union(rep, self.uf.union_all(self.lab(t)))
        self.block(rep, f"passes through aten.{name}, which the tracer does not know")
        for o in tree_flatten(out)[0]:
            if isinstance(o, torch.Tensor):
                self.set(o, torch.full(o.shape, rep, dtype=torch.long))

    def _labels_or_none(self, t: torch.Tensor) -> torch.Tensor:
        lab = self.lab(t)
        return lab if lab is not None else torch.full(t.shape, -1, dtype=torch.long)

    def _view(self, func, args, kwargs, out) -> None:  # noqa: ANN001
        name = func.overloadpacket.__name__

        def sub(a: object) -> object:
            if isinstance(a, torch.Tensor) and (a.is_floating_point() or self.lab(a) is not None):
                return self._labels_or_none(a)
            return a
        if name in ("view", "_unsafe_view"):
            labels = self._labels_or_none(args[0]).reshape(out.shape)
            self.set(out, labels)
            return
        largs = [sub(a) if not isinstance(a, (list, tuple)) else type(a)(sub(x) for x in a)
                 for a in args]
        if name == "constant_pad_nd":
            largs = largs[:2] + [-1]
        lout = func(*largs, **{k: v for k, v in kwargs.items()
                               if k not in ("dtype", "device", "memory_format", "layout")})
        for o, lo in zip(tree_flatten(out)[0], tree_flatten(lout)[0], strict=False):
            if isinstance(o, torch.Tensor) and isinstance(lo, torch.Tensor):
                self.set(o, lo.reshape(o.shape))

    def _elementwise(self, name, args, kwargs, out, flat_in) -> None:  # noqa: ANN001
        outs = [o for o in tree_flatten(out)[0] if isinstance(o, torch.Tensor)]
        shape = outs[0].shape
        result = torch.full(shape, -1, dtype=torch.long)
        for t in flat_in:
            lab = self.lab(t)
            if lab is None:
                continue
            lab = lab.broadcast_to(shape)
            self.uf.union_pairs(result.flatten(), lab.flatten())
            result = torch.where(result >= 0, result, lab)
        for t in flat_in:
            if id(t) in self.names and t.dim() >= 1:
                self.param_members(t, self.names[id(t)], result.broadcast_to(shape))
        for o in outs:
            if o.shape == shape:
                self.set(o, result.clone())

    def _mix(self, name, args, out, lab: torch.Tensor | None = None) -> None:  # noqa: ANN001
        lab = self.lab(args[0]) if lab is None else lab
        dims = args[1] if len(args) > 1 and not isinstance(args[1], bool) else None
        if dims is None or (isinstance(dims, (list, tuple)) and len(dims) == 0):
            dims = list(range(lab.dim()))
        dims = [dims] if isinstance(dims, int) else list(dims)
        dims = [d % lab.dim() for d in dims] if lab.dim() else []
        rest = [d for d in range(lab.dim()) if d not in dims]
        rows = lab.permute(*rest, *dims).reshape(-1, max(1, int(torch.tensor(
            [lab.shape[d] for d in dims]).prod())) if dims else 1)
        reps = self.uf.union_rows(rows)
        rep_full = reps.reshape([lab.shape[d] for d in rest]) if rest else reps.reshape(())
        for o in tree_flatten(out)[0]:
            if not isinstance(o, torch.Tensor):
                continue
            if o.shape == lab.shape:
                self.set(o, lab.clone())
            elif o.numel() == rep_full.numel():
                self.set(o, rep_full.reshape(o.shape).clone())
            else:
                self.set(o, torch.full(o.shape, self.uf.union_all(reps), dtype=torch.long))

    def _layer_norm(self, args, out) -> None:  # noqa: ANN001
        x, shape, weight, bias = args[0], args[1], args[2], args[3]
        lab = self._labels_or_none(x)
        n = len(shape)
        for p in (weight, bias):
            if isinstance(p, torch.Tensor) and id(p) in self.names:
                self.param_members(p.reshape(-1) if n == 1 else p, self.names[id(p)], lab)
        self._mix("layer_norm", (x, list(range(x.dim() - n, x.dim()))), out, lab)
        self.set(out[0], lab)

    def _group_norm(self, args, out) -> None:  # noqa: ANN001
        x, weight, bias, _n, c, _hw, group = args[:7]
        lab = self._labels_or_none(x)
        chans = torch.arange(c).reshape(1, c, *([1] * (x.dim() - 2))).expand(x.shape)
        for p in (weight, bias):
            if isinstance(p, torch.Tensor) and id(p) in self.names:
                self.member(lab, self.names[id(p)], 0, chans)
        self.uf.union_rows(lab.reshape(x.shape[0] * group, -1))
        self.set(out[0], lab)

    def _batch_norm(self, args, out) -> None:  # noqa: ANN001
        x = args[0]
        lab = self._labels_or_none(x)
        chans = torch.arange(x.shape[1]).reshape(1, -1, *([1] * (x.dim() - 2))).expand(x.shape)
        for p in args[1:5]:
            if isinstance(p, torch.Tensor) and id(p) in self.names:
                self.member(lab, self.names[id(p)], 0, chans)
        self.set(out[0] if isinstance(out, (tuple, list)) else out, lab)

    def _linear(self, name, args, out) -> None:  # noqa: ANN001
        """mm(x, t(W)) / addmm(b, x, t(W)): x's column k -> W[:, k]; new units at W's rows."""
        x, wt = (args[0], args[1]) if name == "mm" else (args[1], args[2])
        weight = self.weight_t[id(wt)]
        lab = self.lab(x)
        if lab is not None:
            cols = torch.arange(x.shape[1]).expand(x.shape)
            self.member(lab, weight, 1, cols)
        fresh = self.uf.new(out.shape[1])
        self.member(fresh, weight, 0, torch.arange(out.shape[1]))
        if name == "addmm" and id(args[0]) in self.names and args[0].dim() == 1:
            self.member(fresh, self.names[id(args[0])], 0, torch.arange(out.shape[1]))
        self.set(out, fresh.expand(out.shape).clone())

    def _conv(self, args, out) -> None:  # noqa: ANN001
        x, w, b = args[0], args[1], args[2]
        transposed, groups = args[6], args[8]
        lab = self._labels_or_none(x)
        wname = self.names.get(id(w))
        chans_in = torch.arange(x.shape[1]).reshape(1, -1, *([1] * (x.dim() - 2))).expand(x.shape)
        if wname is None or transposed:
            why = ("its weight is computed at run time (a parametrization such as weight norm)"
                   if wname is None else "a transposed convolution")
            rep = self.uf.union_all(lab)
            fresh = self.uf.new(1)[0].item()
            if rep >= 0:
                self.uf.union(rep, fresh)
            self.block(fresh, f"convolution {why}")
            self.set(out, torch.full(out.shape, fresh, dtype=torch.long))
            return
        c_out = out.shape[1]
        shape_out = (1, -1, *([1] * (out.dim() - 2)))
        if groups == 1:
            self.member(lab, wname, 1, chans_in)
            fresh = self.uf.new(c_out)
        elif groups == x.shape[1] == c_out:  # depthwise: channel c stays channel c
            per_channel = lab.transpose(0, 1).reshape(c_out, -1)
            fresh = self.uf.new(c_out)
            self.uf.union_pairs(self.uf.union_rows(per_channel), fresh)
        else:
            fresh = self.uf.new(c_out)
            per_group = lab.transpose(0, 1).reshape(groups, -1)
            step = c_out // groups
            for g in range(groups):
                rep = self.uf.union_all(per_group[g])
                for o in range(g * step, (g + 1) * step):
                    self.uf.union(int(fresh[g * step]), int(fresh[o]))
                    if rep >= 0:
                        self.uf.union(rep, int(fresh[o]))
                self.block(int(fresh[g * step]), f"grouped convolution {wname} "
                           f"(groups={groups}) mixes the channels of a group")
        self.member(fresh, wname, 0, torch.arange(c_out))
        if isinstance(b, torch.Tensor) and id(b) in self.names:
            self.member(fresh, self.names[id(b)], 0, torch.arange(c_out))
        self.conv.update(fresh.tolist())
        self.set(out, fresh.reshape(shape_out).expand(out.shape).clone())

    def _contraction(self, name, args, out, tracked) -> None:  # noqa: ANN001
        """Attention-like products of activations: one unit per leading (batch x head) slice."""
        operands = [a for a in (args[:3] if name in _SDPA else
                                args[1:3] if name == "baddbmm" else args[:2])
                    if isinstance(a, torch.Tensor)]
        first = next(iter(tree_flatten(out)[0]))
        n_lead = first.dim() - 2 if name in _SDPA or name in ("bmm", "baddbmm") else 0
        lead = tuple(first.shape[:n_lead])
        n_rows = math.prod(lead)
        rows = torch.cat([self._labels_or_none(op).broadcast_to(
            (*lead, *op.shape[n_lead:])).reshape(n_rows, -1) for op in operands], dim=1)
        reps = self.uf.union_rows(rows).reshape(lead)
        self.attention.update(torch.unique(reps[reps >= 0]).tolist())
        for o in tree_flatten(out)[0]:
            if isinstance(o, torch.Tensor) and tuple(o.shape[:n_lead]) == lead:
                self.set(o, reps.reshape(*lead, *([1] * (o.dim() - n_lead))).expand(
                    o.shape).clone())

    # ---- result ---------------------------------------------------------------------------
    def finish(self, outputs: Iterable[torch.Tensor]) -> Units:
        for o in outputs:
            lab = self.lab(o)
            if lab is not None:
                for x in torch.unique(lab[lab >= 0]).tolist():
                    self.block(x, "reaches the model output (a residual stream or the output "
                                  "layer)")
        owner: dict[Member, int] = {}
        for lab, key in self.members:  # a slice owned by two units ties them (shared weights)
            if key in owner:
                self.uf.union(owner[key], lab)
            else:
                owner[key] = lab
        units = Units(ops=self.ops)
        for lab, key in self.members:
            units.members.setdefault(self.uf.find(lab), set()).add(key)
        for lab, reason in self.blocked.items():
            units.blocked.setdefault(self.uf.find(lab), reason)
        units.attention = {self.uf.find(x) for x in self.attention}
        units.conv = {self.uf.find(x) for x in self.conv}
        return units


@contextmanager
def eval_mode(model: torch.nn.Module) -> Iterator[None]:
    """`model` in eval mode inside, each module's own mode restored after: a recorded run must
    not update the caller's BatchNorm statistics, and dropout would make the groups random."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for m, training in modes:
            m.training = training


def record_units(model: torch.nn.Module, example: tuple) -> Units:
    """Run `model(*example)` once (no grad, eval mode) and return its unit classes (see module
    doc)."""
    names: dict[int, str] = {}  # the first name, as named_parameters() / named_modules() give
    for n, t in [*model.named_parameters(remove_duplicate=False),
                 *model.named_buffers(remove_duplicate=False)]:
        names.setdefault(id(t), n)
    recorder = _Recorder(names)
    with torch.no_grad(), eval_mode(model), recorder:
        out = model(*example)
    return recorder.finish([o for o in tree_flatten(out)[0] if isinstance(o, torch.Tensor)])
