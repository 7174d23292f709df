"""Where an acoustic model's cost sits: per-layer parameters, MACs, bytes and measured time.

    p = profile(model, audio_seconds=4.0)   # any nn.Module of Linear / Conv / attention / norm
    p.by_role()                             # totals per role (front-end, attention, ffn, ...)
    p.vs_length([2, 8, 30])                 # MAC share per role as the audio grows

How it works: the model (a deep copy, in eval mode, so the caller's mode and weights stay as they
were) runs once on example inputs of `audio_seconds` with a forward hook on every module that
records input / output shapes. Each leaf layer gets a row with analytic MACs for one forward pass:

    Linear          MACs = T * in * out                       (T = positions, batch 1)
    Conv (1-D/2-D)  MACs = positions_out * C_out * C_in / groups * prod(kernel)
    attention       MACs = 2 * H * T^2 * Dh    (Q K^T and softmax(.) V), its own row "<attn>.scores"
    norm            MACs = elements            (the affine; statistics are memory-bound work)
    activation      MACs = 0 (elementwise)

Attention modules are our `MultiHeadSelfAttention`, `nn.MultiheadAttention` and any module with
integer `num_heads`/`n_heads` and `head_dim` attributes (torchaudio's wav2vec2 `SelfAttention`).
`nn.MultiheadAttention` calls its projections functionally, so its in/out projections are
computed from its weights (rows "<attn>.in_proj", "<attn>.out_proj").

Measured time (`measure=True`): one thread, a forward pre/post hook pair with `time.perf_counter`
around every module, median of `repeats` runs. A leaf's row gets its inclusive time; an attention
scores row gets the attention module's self time (inclusive minus its projections). What no row
covers (functional activations, residual adds, reshapes) is `Profile.unattributed_ms`.

Peak activation memory is an estimate, not a measurement: the largest over layers of (input +
output of that layer + one residual-stream tensor kept alive across it), with fp32 activations and
the attention score matrix (H, T, T) materialised as ONNX Runtime does.
"""
from __future__ import annotations

import copy
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import torch
from torch import nn

from workbench.checks import check_bool, check_int, check_model, check_seconds, max_seconds_of
from workbench.errors import WorkbenchError
from workbench.models.base import ROLE_NAMES, example_input, role_of


_NORMS = (nn.LayerNorm, nn.GroupNorm, nn.modules.batchnorm._BatchNorm,
          nn.modules.instancenorm._InstanceNorm, nn.RMSNorm)
_ACTIVATIONS = (nn.GELU, nn.SiLU, nn.ReLU, nn.GLU, nn.Tanh, nn.Sigmoid, nn.Softmax,
                nn.LogSoftmax, nn.Hardswish, nn.LeakyReLU)
_SKIPPED = (nn.Dropout, nn.Identity)

#: Row kinds; the latency model maps them to op classes.
KINDS = ("linear", "conv", "attention_scores", "norm", "activation", "other")

MakeInputs = Callable[[float], tuple[Any, ...]]


@dataclass(frozen=True)
class ProfileRow:
    """One leaf layer (or attention-scores op) for one forward pass on `Profile.audio_seconds`."""

    path: str
    role: str                   # one of workbench.models.ROLE_NAMES
    kind: str                   # one of KINDS
    params: int                 # weight + bias elements (effective weight for weight-normed convs)
    macs: int                   # multiply-accumulates, batch 1
    weight_bytes: int           # params at their stored dtype
    input_bytes: int            # input tensor(s) of the op (q, k, v for attention scores)
    activation_bytes: int       # output tensor (the (H, T, T) score matrix for attention scores)
    positions: int              # time steps (or H*W for 2-D convs) the op runs over
    in_width: int               # Linear in_features, conv C_in/groups*kernel, attention H*Dh
    out_width: int              # Linear out_features, conv C_out, attention H*Dh
    heads: int = 0              # attention scores only
    head_dim: int = 0
    time_ms: float | None = None  # measured on this machine (median), None if not measured


@dataclass(frozen=True)
class RoleTotals:
    """Sums over the rows of one role; shares are fractions of the whole model (0..1)."""

    role: str
    layers: int
    params: int
    macs: int
    weight_bytes: int
    activation_bytes: int
    time_ms: float | None
    macs_share: float
    time_share: float | None


@dataclass(frozen=True)
class Profile:
    """Per-layer rows in execution order plus whole-model numbers. Plain data: no model inside."""

    rows: tuple[ProfileRow, ...]
    audio_seconds: float
    peak_activation_bytes: int
    total_ms: float | None = None           # whole forward without hooks (median), if measured
    repeats: int = 0

    @property
    def params(self) -> int:
        return sum(r.params for r in self.rows)

    @property
    def macs(self) -> int:
        return sum(r.macs for r in self.rows)

    @property
    def unattributed_ms(self) -> float | None:
        """Measured time no row covers (functional activations, residual adds, reshapes, hooks)."""
        if self.total_ms is None:
            return None
        return self.total_ms - sum(r.time_ms or 0.0 for r in self.rows)

    def by_role(self, split_scores: bool = False) -> dict[str, RoleTotals]:
        """Totals per role in ROLE_NAMES order. split_scores: scores rows as 'attention scores'."""
        groups: dict[str, list[ProfileRow]] = {}
        for r in self.rows:
            groups.setdefault(_group(r, split_scores), []).append(r)
        total_macs = max(self.macs, 1)
        measured = all(r.time_ms is not None for r in self.rows)
        total_t = sum(r.time_ms or 0.0 for r in self.rows) if measured else None
        out = {}
        for key in sorted(groups, key=_role_order):
            rs = groups[key]
            t = sum(r.time_ms or 0.0 for r in rs) if measured else None
            out[key] = RoleTotals(
                role=key, layers=len(rs), params=sum(r.params for r in rs),
                macs=sum(r.macs for r in rs), weight_bytes=sum(r.weight_bytes for r in rs),
                activation_bytes=sum(r.activation_bytes for r in rs), time_ms=t,
                macs_share=sum(r.macs for r in rs) / total_macs,
                time_share=(t / total_t if total_t else None) if measured else None)
        return out

    def vs_length(self, seconds: Sequence[float], split_scores: bool = True
                  ) -> dict[float, dict[str, float]]:
        """MAC share per role at other audio lengths: {seconds: {role: share}}.

        Analytic scaling from this profile: every row's work grows with T (positions scale with
        the audio length), the attention scores with T^2. Strided front-ends round positions, so
        this is exact up to a frame per layer.
        """
        out: dict[float, dict[str, float]] = {}
        for s in seconds:
            _check_seconds(s)
            scale = s / self.audio_seconds
            macs: dict[str, float] = {}
            for r in self.rows:
                k = _group(r, split_scores)
                macs[k] = macs.get(k, 0.0) + r.macs * (scale ** 2 if r.kind == "attention_scores"
                                                       else scale)
            total = sum(macs.values()) or 1.0
            out[float(s)] = {k: macs[k] / total for k in sorted(macs, key=_role_order)}
        return out

    def to_records(self) -> list[dict[str, Any]]:
        """Rows as plain dicts (for tables and JSON)."""
        return [asdict(r) for r in self.rows]


def profile(model: nn.Module, audio_seconds: float = 4.0, measure: bool = True, *,
            make_inputs: MakeInputs | None = None, repeats: int = 5) -> Profile:
    """Per-layer cost table of `model` on `audio_seconds` of audio (batch 1). See module docstring.

    make_inputs(seconds) -> positional inputs of the model's forward; default: CTC models
    (features (1, n_mels, 100*s), lengths (1,)). The caller's model is not touched (deep copy).
    """
    check_model(model, "profile")
    check_seconds(audio_seconds, "profile", max_seconds=max_seconds_of(model))
    check_int(repeats, "profile", "repeats", low=1, high=1000)
    check_bool(measure, "profile", "measure")
    work = copy.deepcopy(model).eval()
    inputs = (make_inputs or default_inputs(model))(audio_seconds)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)   # restored below: per-layer times are single-thread numbers
    try:
        with torch.inference_mode():
            calls = _trace(work, inputs, runs=(1 + repeats) if measure else 1)
            total_ms = _median_forward_ms(work, inputs, repeats) if measure else None
    finally:
        torch.set_num_threads(threads)
    rows = _rows(work, calls, measured=measure)
    return Profile(rows=tuple(rows), audio_seconds=float(audio_seconds),
                   peak_activation_bytes=_peak_activation(work, rows, calls),
                   total_ms=total_ms, repeats=repeats if measure else 0)


def default_inputs(model: nn.Module) -> MakeInputs:
    """Example-input factory for a CTC model: log-mel features at 100 frames/s, batch 1 (or
    the 16 kHz waveform (1, 1, samples) for a model adapted with features="waveform")."""
    if not callable(getattr(model, "input_spec", None)):
        raise WorkbenchError(f"{type(model).__name__}: not a workbench CTC model; pass "
                             f"make_inputs=lambda seconds: (example inputs of its forward,).")

    def make(seconds: float) -> tuple[torch.Tensor, torch.Tensor]:
        return example_input(model, seconds)
    return make


def _check_seconds(seconds: float) -> None:
    if not seconds > 0:
        raise WorkbenchError(f"audio_seconds: must be > 0 seconds, got {seconds!r}.")


def _group(row: ProfileRow, split_scores: bool) -> str:
    return "attention scores" if split_scores and row.kind == "attention_scores" else row.role


def _role_order(key: str) -> tuple[int, str]:
    base = "attention" if key == "attention scores" else key
    idx = ROLE_NAMES.index(base) if base in ROLE_NAMES else len(ROLE_NAMES)
    return (idx, key)


# ---------------------------------------------------------------- tracing

@dataclass
class _Call:
    """One module call seen by the hooks (the first run gives shapes, every run gives times)."""

    path: str
    module: nn.Module
    order: int
    parent: int | None
    in_shape: tuple[int, ...] = ()
    in_bytes: int = 0
    out_shape: tuple[int, ...] = ()
    out_bytes: int = 0
    out_dtype_bytes: int = 4
    inclusive_ms: list[float] = field(default_factory=list)
    child_ms: list[float] = field(default_factory=list)


def attention_spec(module: nn.Module) -> tuple[int, int] | None:
    """(heads, head_dim) if `module` is a self-attention layer we can account for, else None."""
    if isinstance(module, nn.MultiheadAttention):
        return module.num_heads, module.head_dim
    heads = getattr(module, "n_heads", getattr(module, "num_heads", None))
    head_dim = getattr(module, "head_dim", None)
    if isinstance(heads, int) and isinstance(head_dim, int) and not isinstance(module, nn.Linear):
        return heads, head_dim
    return None


def _first_tensor(obj: Any) -> torch.Tensor | None:
    if isinstance(obj, torch.Tensor):
        return obj
    if isinstance(obj, (tuple, list)):
        for o in obj:
            t = _first_tensor(o)
            if t is not None:
                return t
    if isinstance(obj, dict):
        for o in obj.values():
            t = _first_tensor(o)
            if t is not None:
                return t
    return None


def _trace(model: nn.Module, inputs: tuple[Any, ...], runs: int) -> list[_Call]:
    """Run the model `runs` times with hooks on every module; calls in order of entry."""
    calls: list[_Call] = []
    stack: list[tuple[int, float, float]] = []
    run_idx = [0]
    cursor = [0]
    names = {m: p for p, m in model.named_modules()}
    # nn.MultiheadAttention uses its out_proj weights functionally: its children are never called.
    inside_mha = {id(c) for m in model.modules() if isinstance(m, nn.MultiheadAttention)
                  for c in m.modules() if c is not m}

    def pre(module: nn.Module, args: tuple, kwargs: dict) -> None:
        entered = time.perf_counter()
        if run_idx[0] == 0:
            parent = stack[-1][0] if stack else None
            calls.append(_Call(names[module], module, len(calls), parent))
            idx = len(calls) - 1
            x = _first_tensor(args) if _first_tensor(args) is not None else _first_tensor(kwargs)
            if x is not None:
                calls[idx].in_shape = tuple(x.shape)
                calls[idx].in_bytes = x.numel() * x.element_size()
        else:
            idx = cursor[0]
            cursor[0] += 1
        stack.append((idx, entered, time.perf_counter()))

    def post(module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
        end = time.perf_counter()
        idx, entered, start = stack.pop()
        elapsed = (end - start) * 1e3
        call = calls[idx]
        if run_idx[0] == 0:
            y = _first_tensor(output)
            if y is not None:
                call.out_shape = tuple(y.shape)
                call.out_bytes = y.numel() * y.element_size()
                call.out_dtype_bytes = y.element_size()
        else:
            call.inclusive_ms.append(elapsed)
            if stack:  # the parent loses the child's time including its hooks' own cost
                calls[stack[-1][0]].child_ms.append((time.perf_counter() - entered) * 1e3)

    handles = []
    for path, m in model.named_modules():
        if path and id(m) not in inside_mha:
            handles.append(m.register_forward_pre_hook(pre, with_kwargs=True))
            handles.append(m.register_forward_hook(post, with_kwargs=True))
    try:
        for r in range(runs):
            run_idx[0] = r
            cursor[0] = 0
            model(*inputs)
    finally:
        for h in handles:
            h.remove()
    if runs > 1:   # the first run (shapes, warm-up) carries no times
        n = runs - 1
        for c in calls:
            per_run = len(c.child_ms) // n if c.child_ms else 0
            c.child_ms = ([sum(c.child_ms[i * per_run:(i + 1) * per_run]) for i in range(n)]
                          if per_run else [])
    return calls


def _median_forward_ms(model: nn.Module, inputs: tuple[Any, ...], repeats: int) -> float:
    model(*inputs)  # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        model(*inputs)
        times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times)


# ---------------------------------------------------------------- rows

def _rows(model: nn.Module, calls: list[_Call], measured: bool) -> list[ProfileRow]:
    """One row per leaf layer call (merged per path), attention scores as their own rows."""
    roles = _RoleInference(model, calls)
    rows: list[ProfileRow] = []
    for call in calls:
        m = call.module
        med = statistics.median(call.inclusive_ms) if measured and call.inclusive_ms else None
        spec = attention_spec(m)
        if isinstance(m, nn.MultiheadAttention):
            rows.extend(_mha_rows(call, roles, med))
            continue
        if spec is not None:
            self_ms = None
            if med is not None:
                child = statistics.median(call.child_ms) if call.child_ms else 0.0
                self_ms = max(med - child, 0.0)
            rows.append(_scores_row(call, spec, roles.role(call.path + ".scores", call),
                                    self_ms, time_axis=1))
            continue
        if ".parametrizations." in call.path:
            continue   # torch.nn.utils.parametrize internals: counted in the owning layer's weight
        row = _leaf_row(call, roles, med)
        if row is not None:
            rows.append(row)
    return _merge_repeated(_scores_in_execution_order(rows))


def _scores_in_execution_order(rows: list[ProfileRow]) -> list[ProfileRow]:
    """Move each scores row (emitted when its module is entered) before the module's out_proj."""
    out = list(rows)
    for r in rows:
        if r.kind != "attention_scores" or r.path.endswith(".in_proj"):
            continue
        owner = r.path[: -len(".scores")]
        out.remove(r)
        inside = [i for i, x in enumerate(out) if x.path.startswith(owner + ".")]
        if not inside:
            out.insert(min(rows.index(r), len(out)), r)
            continue
        out_proj = [i for i in inside if "out_proj" in out[i].path]
        out.insert(out_proj[0] if out_proj else inside[-1] + 1, r)
    return out


def _leaf_row(call: _Call, roles: _RoleInference, med: float | None) -> ProfileRow | None:
    m = call.module
    if isinstance(m, _SKIPPED):
        return None
    w = getattr(m, "weight", None)
    b = getattr(m, "bias", None)
    params = sum(t.numel() for t in (w, b) if isinstance(t, torch.Tensor))
    wbytes = sum(t.numel() * t.element_size() for t in (w, b) if isinstance(t, torch.Tensor))
    out_numel = _numel(call.out_shape)
    if isinstance(m, nn.Linear):
        kind, positions = "linear", out_numel // m.out_features
        in_w, out_w = m.in_features, m.out_features
        macs = positions * in_w * out_w
    elif isinstance(m, nn.modules.conv._ConvNd):
        kind, positions = "conv", out_numel // m.out_channels
        in_w = m.in_channels // m.groups * _numel(m.kernel_size)
        out_w = m.out_channels
        macs = positions * out_w * in_w
    elif isinstance(m, _NORMS):
        kind, macs = "norm", out_numel
        in_w = out_w = call.out_shape[-1] if isinstance(m, nn.LayerNorm) else call.out_shape[1]
        positions = out_numel // max(out_w, 1)
    elif isinstance(m, _ACTIVATIONS):
        kind, macs, in_w, out_w = "activation", 0, 0, 0
        positions = 0
    elif _own_params(m):   # e.g. a custom layer holding its own parameters
        params = sum(p.numel() for p in m.parameters(recurse=False))
        wbytes = sum(p.numel() * p.element_size() for p in m.parameters(recurse=False))
        kind, macs, positions, in_w, out_w = "other", 0, 0, 0, 0
    else:
        return None
    return ProfileRow(path=call.path, role=roles.role(call.path, call), kind=kind, params=params,
                      macs=int(macs), weight_bytes=wbytes, input_bytes=call.in_bytes,
                      activation_bytes=call.out_bytes, positions=int(positions),
                      in_width=int(in_w), out_width=int(out_w), time_ms=med)


def _scores_row(call: _Call, spec: tuple[int, int], role: str, ms: float | None,
                time_axis: int) -> ProfileRow:
    heads, head_dim = spec
    t = call.in_shape[time_axis] if len(call.in_shape) == 3 else call.in_shape[0]
    inner = heads * head_dim
    elem = call.out_dtype_bytes
    return ProfileRow(path=call.path + ".scores", role=role, kind="attention_scores", params=0,
                      macs=2 * heads * t * t * head_dim, weight_bytes=0,
                      input_bytes=3 * t * inner * elem, activation_bytes=heads * t * t * elem,
                      positions=t, in_width=inner, out_width=inner, heads=heads,
                      head_dim=head_dim, time_ms=ms)


def _mha_rows(call: _Call, roles: _RoleInference, med: float | None) -> list[ProfileRow]:
    """nn.MultiheadAttention: in_proj, scores, out_proj computed from its weights and shapes."""
    m: nn.MultiheadAttention = call.module  # type: ignore[assignment]
    time_axis = 1 if m.batch_first else 0
    t = call.in_shape[time_axis]
    e = m.embed_dim
    elem = call.out_dtype_bytes
    in_w = m.in_proj_weight if m.in_proj_weight is not None else None
    in_params = (3 * e * e if in_w is None else in_w.numel()) + (
        m.in_proj_bias.numel() if m.in_proj_bias is not None else 0)
    out_params = m.out_proj.weight.numel() + (
        m.out_proj.bias.numel() if m.out_proj.bias is not None else 0)
    scores = _scores_row(call, (m.num_heads, m.head_dim),
                         roles.role(call.path + ".scores", call), None, time_axis)
    rows = [
        ProfileRow(path=call.path + ".in_proj", role=roles.role(call.path + ".in_proj", call),
                   kind="linear", params=in_params, macs=t * e * 3 * e,
                   weight_bytes=in_params * elem, input_bytes=t * e * elem,
                   activation_bytes=3 * t * e * elem, positions=t, in_width=e, out_width=3 * e),
        scores,
        ProfileRow(path=call.path + ".out_proj", role=roles.role(call.path + ".out_proj", call),
                   kind="linear", params=out_params, macs=t * e * e,
                   weight_bytes=out_params * elem, input_bytes=t * e * elem,
                   activation_bytes=t * e * elem, positions=t, in_width=e, out_width=e),
    ]
    if med is None:
        return rows
    total_macs = sum(r.macs for r in rows) or 1   # one fused call: split its time by MACs
    return [replace(r, time_ms=med * r.macs / total_macs) for r in rows]


def _merge_repeated(rows: list[ProfileRow]) -> list[ProfileRow]:
    """A module called several times per forward: one row, work and time summed."""
    merged: dict[str, ProfileRow] = {}
    for r in rows:
        if r.path not in merged:
            merged[r.path] = r
            continue
        a = merged[r.path]
        t = None if a.time_ms is None or r.time_ms is None else a.time_ms + r.time_ms
        merged[r.path] = replace(a, macs=a.macs + r.macs, positions=a.positions + r.positions,
                                 input_bytes=max(a.input_bytes, r.input_bytes),
                                 activation_bytes=max(a.activation_bytes, r.activation_bytes),
                                 time_ms=t)
    return list(merged.values())


def _own_params(m: nn.Module) -> bool:
    return any(True for _ in m.parameters(recurse=False))


def _numel(shape: Sequence[int]) -> int:
    n = 1
    for s in shape:
        n *= int(s)
    return n


def _peak_activation(model: nn.Module, rows: list[ProfileRow], calls: list[_Call]) -> int:
    """Estimate (module docstring): max over rows of input + output + one residual-stream tensor.

    The residual stream is the largest output of a repeated block (an item of an nn.ModuleList).
    """
    items = {f"{p}.{name}" if p else name for p, m in model.named_modules()
             if isinstance(m, nn.ModuleList) for name, _ in m.named_children()}
    residual = max((c.out_bytes for c in calls if c.path in items), default=0)
    return max((r.input_bytes + r.activation_bytes + residual for r in rows), default=0)


class _RoleInference:
    """Role of a row: the model's ROLES patterns first, then module types and positions.

    Inference for foreign models: a *block* is an item of an nn.ModuleList whose subtree holds an
    attention module. Inside a block: anything under the attention module -> attention, norms ->
    norm, convs (and activations under a module whose path says 'conv') -> conv, other -> ffn.
    Outside blocks: norms -> norm; calls before the first block -> front-end, after -> head.
    """

    def __init__(self, model: nn.Module, calls: list[_Call]) -> None:
        self.model = model
        attn = [p for p, m in model.named_modules() if attention_spec(m) is not None]
        self.attn_paths = attn
        self.block_paths = sorted({
            p for p, m in model.named_modules()
            if "." in p and p.rsplit(".", 1)[1].isdigit()
            and any(a == p or a.startswith(p + ".") for a in attn)})
        block_calls = [c.order for c in calls if c.path in self.block_paths]
        self.first_block = min(block_calls, default=None)

    def role(self, path: str, call: _Call) -> str:
        for p in (path, call.path):
            r = role_of(self.model, p)
            if r != "other":
                return r
        return self._infer(path, call)

    def _infer(self, path: str, call: _Call) -> str:
        m = call.module
        if isinstance(m, _NORMS):
            return "norm"
        if any(path == a or path.startswith(a + ".") for a in self.attn_paths):
            return "attention"
        in_block = any(path.startswith(b + ".") for b in self.block_paths)
        if in_block:
            if isinstance(m, nn.modules.conv._ConvNd) or ".conv" in path:
                return "conv"
            return "ffn"
        if self.first_block is None or call.order < self.first_block:
            return "front-end"
        return "head"
