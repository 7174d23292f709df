"""Exact bytes of a compressed model, per layer, from a plan (no model run) or from the model.

    size(model, plan) -> SizeReport              price a plan on the uncompressed model
    size_of_compressed(compressed, baseline)     measure what `compress` built (same numbers)

Formulas (n = out * K weights, K = in_features, or in_channels / groups * kernel elements;
b = weight bits; every scale is fp32; "ceil" rounds bytes up per tensor):

    fp32 (untouched)   4 n
    fp16 (b = 16)      2 n
    per_tensor         ceil(n b / 8) + 4 + zp,  zp = 1 byte if asymmetric or b = 8
    per_channel        ceil(n b / 8) + 4 out + zp,  zp = out bytes if asymmetric or b = 8
                       (b = 8 is ONNX Runtime's per-channel int8 quantization: int8 weights, an
                       fp32 scale and an int8 zero point per output channel; it writes zero
                       points even when they are all 0)
    per_block          ONNX Runtime MatMulNBits with block_size 32 along K:
                       n_blocks = ceil(K / 32); weights out * n_blocks * ceil(32 b / 8) (K padded
                       to whole blocks), scales 4 out n_blocks, zero points only if asymmetric:
                       out * ceil(n_blocks b / 8) (packed b-bit, as MatMulNBits stores them)
    act_bits = 8       + 4 (fp32 scale) + 1 (uint8 zero point) per quantized layer input
                       (static activation quantization; ORT dynamic quantization stores none)
    unstructured       weights stored sparse when that is smaller: values ceil(nnz b / 8) (fp32:
                       4 nnz), scales and zero points as dense, plus the cheaper index of a 1-bit
                       bitmap (ceil(n / 8)) and CSR (int32 column per value + int32 row pointers,
                       4 nnz + 4 (out + 1)); `dense_bytes` is the same layer stored with zeros
    low rank           the two factors (r, in) and (out, r), each priced as above
    registered         a technique with a `size_specs` hook rewrites the WeightSpecs of the
                       Linear / Conv layers it is set on (workbench.compress.techniques)
    everything else    biases, norms, persistent buffers (e.g. positional_embedding): their own
                       dtype (4 bytes for fp32), as in the state dict
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import nn

from workbench.compress.calibration_stats import Calibration, taylor_gradients
from workbench.compress.importance import has_glu
from workbench.compress.lowrank import LowRankLinear, choose_rank
from workbench.compress.prune import count_to_remove, keep_indices
from workbench.compress.quantize import BLOCK_SIZE, BOOKKEEPING_BUFFERS, ActivationFakeQuant
from workbench.compress.targets import find_targets, graph_groups
from workbench.compress.techniques import techniques
from workbench.plan import CompressionPlan, LayerConfig
from workbench.compress.resolution import resolve
from workbench.checks import check_bool, check_model, check_plan
from workbench.compress import importance as imp
from workbench.compress.apply import under
from workbench.graph.surgery import choose

NOTE = ("Unstructured sparsity is priced here in a sparse format, but it gives no speed-up on "
        "CPU runtimes (ONNX Runtime and the edge CPUs we target run dense kernels), and the "
        "ONNX export stores those weights dense (see dense_bytes). For speed use structured "
        "pruning (heads, neurons, channels) or low rank.")


@dataclass(frozen=True)
class WeightSpec:
    """How one weight matrix is stored: shape (out, K), bits (32 = fp32), grid, sparsity."""

    out: int
    k: int
    bits: int = 32
    granularity: str = "per_channel"
    symmetric: bool = True
    nnz: int | None = None
    act_quant: bool = False


@dataclass(frozen=True)
class LayerSize:
    """Bytes of one module's own tensors. kind: linear | conv | low_rank | tensors."""

    path: str
    kind: str
    format: str
    params: int
    weight_bytes: int
    scale_bytes: int
    zero_point_bytes: int
    index_bytes: int
    other_bytes: int
    dense_bytes: int
    baseline_bytes: int

    @property
    def total_bytes(self) -> int:
        return (self.weight_bytes + self.scale_bytes + self.zero_point_bytes + self.index_bytes
                + self.other_bytes)


@dataclass(frozen=True)
class SizeReport:
    """Per-layer and total bytes, against the fp32 model. `note` says what sparsity buys."""

    layers: tuple[LayerSize, ...]
    total_bytes: int
    dense_bytes: int
    baseline_bytes: int
    params: int
    baseline_params: int
    note: str = NOTE

    @property
    def ratio(self) -> float:
        """Compression ratio: fp32 bytes / compressed bytes."""
        return self.baseline_bytes / self.total_bytes

    def layer(self, path: str) -> LayerSize:
        return next(row for row in self.layers if row.path == path)


def storage_bytes(spec: WeightSpec) -> dict[str, int | str]:
    """Bytes of one weight matrix: weight, scale, zero_point, index, dense (and a format name)."""
    n, out, b = spec.out * spec.k, spec.out, spec.bits
    scale = zero_point = 0
    if b == 32:
        dense_w, name = 4 * n, "fp32"
    elif b == 16:
        dense_w, name = 2 * n, "fp16"
    elif spec.granularity == "per_block":
        n_blocks = math.ceil(spec.k / BLOCK_SIZE)
        dense_w = out * n_blocks * math.ceil(BLOCK_SIZE * b / 8)
        scale = 4 * out * n_blocks
        zero_point = out * math.ceil(n_blocks * b / 8) if not spec.symmetric else 0
        name = f"int{b} per_block({BLOCK_SIZE})"
    else:
        groups = out if spec.granularity == "per_channel" else 1
        dense_w = math.ceil(n * b / 8)
        scale = 4 * groups
        zero_point = groups if (not spec.symmetric or b == 8) else 0
        name = f"int{b} {spec.granularity}"
    if b < 16 and not spec.symmetric:
        name += " asym"
    if spec.act_quant:
        scale, zero_point, name = scale + 4, zero_point + 1, name + " + act int8"
    dense = dense_w + scale + zero_point
    result: dict[str, int | str] = {"weight": dense_w, "scale": scale, "zero_point": zero_point,
                                    "index": 0, "dense": dense, "format": name}
    if spec.nnz is not None and spec.nnz < n:
        values = {32: 4 * spec.nnz, 16: 2 * spec.nnz}.get(b, math.ceil(spec.nnz * b / 8))
        bitmap, csr = math.ceil(n / 8), 4 * spec.nnz + 4 * (out + 1)
        index = min(bitmap, csr)
        if values + index < dense_w:
            result.update(weight=values, index=index,
                          format=f"{name} sparse {'bitmap' if bitmap <= csr else 'CSR'}")
    return result


def _row(path: str, kind: str, specs: list[WeightSpec], other: tuple[int, int],
         baseline: int) -> LayerSize:
    """A LayerSize from weight specs and (other bytes, other params)."""
    parts = [storage_bytes(s) for s in specs]
    formats = sorted({str(p["format"]) for p in parts})
    return LayerSize(
        path=path, kind=kind, format=" / ".join(formats) if formats else "fp32",
        params=sum(s.out * s.k for s in specs) + other[1],
        weight_bytes=sum(int(p["weight"]) for p in parts),
        scale_bytes=sum(int(p["scale"]) for p in parts),
        zero_point_bytes=sum(int(p["zero_point"]) for p in parts),
        index_bytes=sum(int(p["index"]) for p in parts), other_bytes=other[0],
        dense_bytes=sum(int(p["dense"]) for p in parts) + other[0], baseline_bytes=baseline)


def _report(rows: list[LayerSize], baseline_params: int) -> SizeReport:
    return SizeReport(layers=tuple(rows), total_bytes=sum(r.total_bytes for r in rows),
                      dense_bytes=sum(r.dense_bytes for r in rows),
                      baseline_bytes=sum(r.baseline_bytes for r in rows),
                      params=sum(r.params for r in rows), baseline_params=baseline_params)


# ---- tensors by owning module ------------------------------------------------------------------
#: owner path -> tensor name -> (shape, bytes per element, is a parameter)
Shapes = dict[str, dict[str, tuple[list[int], int, bool]]]


def _owner(model: nn.Module, key: str) -> tuple[str, str] | None:
    """(owning layer path, tensor name) of a state-dict key; None for bookkeeping buffers.
    Tensors of a LowRankLinear's factors and of a layer's activation quantizer belong to it."""
    path, _, name = key.rpartition(".")
    if name in BOOKKEEPING_BUFFERS:
        return None
    module = model.get_submodule(path) if path else model
    if isinstance(module, ActivationFakeQuant):
        return None
    parent, _, child = path.rpartition(".")
    if child in ("down", "up") and isinstance(model.get_submodule(parent), LowRankLinear):
        return parent, f"{child}.{name}"
    if ".parametrizations." in f".{path}.":  # weight norm & co: X.parametrizations.weight.original0
        owner, _, rest = f".{path}".partition(".parametrizations.")
        return owner[1:], f"{rest}.{name}"
    return path, name


def _weight_key(tensors: Mapping[str, tuple[list[int], int, bool]]) -> str | None:
    """The stored tensor that holds a layer's weight matrix: 'weight', or under a weight-norm
    parametrization 'weight.original1' (v, the weight's shape; g is priced as other bytes)."""
    for key in ("weight", "weight.original1"):
        if key in tensors:
            return key
    return None


def _shapes(model: nn.Module) -> Shapes:
    params = {n for n, _ in model.named_parameters()}
    out: Shapes = {}
    for key, tensor in model.state_dict().items():
        owner = _owner(model, key)
        if owner is not None:
            out.setdefault(owner[0], {})[owner[1]] = (list(tensor.shape), tensor.element_size(),
                                                      key in params)
    return out


def _bytes(tensors: Mapping[str, tuple[list[int], int, bool]], skip: tuple[str, ...] = ()
           ) -> tuple[int, int]:
    """(bytes, parameter elements) of the tensors not in `skip`."""
    kept = [(math.prod(s), e, p) for n, (s, e, p) in tensors.items() if n not in skip]
    return sum(n * e for n, e, _ in kept), sum(n for n, _, p in kept if p)


def _baseline(model: nn.Module) -> tuple[dict[str, int], int]:
    shapes = _shapes(model)
    return ({path: _bytes(t)[0] for path, t in shapes.items()},
            sum(_bytes(t)[1] for t in shapes.values()))


# ---- pricing a plan ----------------------------------------------------------------------
def size(model: nn.Module, plan: CompressionPlan, calib: Calibration | None = None,
         force: bool = False, spectra: Mapping[str, torch.Tensor] | None = None) -> SizeReport:
    """Bytes of `compress(model, plan)` without building it (arithmetic on shapes, ~ms).

    Reads weights only for `energy` low rank (singular values of the weight after pruning;
    pass `spectra=workbench.compress.lowrank.spectra(model)`, computed once, to skip the SVD
    of layers whose parent is not pruned); if that layer's FFN / attention is pruned by
    'taylor' importance, `calib` is needed too.
    """
    check_model(model, "size")
    plan = check_plan(plan, "size")
    check_bool(force, "size", "force")
    resolved = resolve(plan, model, force=force)
    shapes = _shapes(model)
    baseline, baseline_params = _baseline(model)
    graph = graph_groups(model)
    for path, cfg in resolved.items():
        if cfg.prune is not None and path in graph:
            _shrink_graph_group(model, graph[path], cfg, shapes, calib)
        elif cfg.prune is not None and cfg.prune.structure != "unstructured":
            _shrink_structured(model, path, cfg, shapes)
    grads = None
    targets = find_targets(model)
    rows = []
    for path, tensors in shapes.items():
        target = targets.get(path)
        if target is None or target.kind not in ("linear", "conv"):
            rows.append(_row(path, "tensors", [], _bytes(tensors), baseline.get(path, 0)))
            continue
        cfg = resolved.get(path, LayerConfig())
        wkey = _weight_key(tensors)
        if wkey is None:
            rows.append(_row(path, "tensors", [], _bytes(tensors), baseline.get(path, 0)))
            continue
        shape = tensors[wkey][0]
        out, k = shape[0], math.prod(shape[1:])
        quant = cfg.quant
        base = dict(bits=32 if quant is None or quant.weight_bits is None else quant.weight_bits,
                    granularity=quant.granularity if quant else "per_channel",
                    symmetric=quant.symmetric if quant else True,
                    act_quant=quant is not None and quant.act_bits is not None)
        other = _bytes(tensors, skip=(wkey,))
        kind = target.kind
        if cfg.prune is not None and cfg.prune.structure == "unstructured":
            nnz = out * k - count_to_remove(out * k, cfg.prune.amount, keep_one=False)
            specs = [WeightSpec(out, k, nnz=nnz, **base)]
        elif cfg.rank is not None or cfg.energy is not None:
            if cfg.energy is not None and grads is None and _needs_grads(resolved, path):
                grads = taylor_gradients(model, calib or ())
            known = (spectra.get(path) if spectra is not None
                     and _structured_parent(resolved, path) is None else None)
            weight = (_pruned_weight(model, resolved, path, grads)
                      if cfg.energy is not None and known is None
                      else torch.empty(out, k, device="meta"))
            rank, dense_reason = choose_rank(weight, cfg.rank, cfg.energy, known)
            if dense_reason is None:
                kind = "low_rank"
                specs = [WeightSpec(rank, k, **base), WeightSpec(out, rank, **base)]
            else:
                specs = [WeightSpec(out, k, **base)]
        else:
            specs = [WeightSpec(out, k, **base)]
        # techniques registered with a bytes hook (module docstring), set on this layer or on a
        # module holding it (a grouped FFN's setting reshapes its fc1 / fc2)
        owners = [cfg] + [resolved[p] for p in _ancestors(path) if p in resolved]
        for tech in techniques():
            for owner in owners:
                setting = tech.setting(owner) if tech.size_specs is not None else None
                if setting is not None:
                    specs = tech.size_specs(specs, setting)
        rows.append(_row(path, kind, specs, other, baseline.get(path, 0)))
    return _report(rows, baseline_params)


def _ancestors(path: str) -> list[str]:
    """'a.b.c' -> ['a.b', 'a'] (the modules holding the layer at `path`, nearest first)."""
    parts = path.split(".")
    return [".".join(parts[:i]) for i in range(len(parts) - 1, 0, -1)]


def _shrink_structured(model: nn.Module, path: str, cfg: LayerConfig, shapes: Shapes) -> None:
    """Apply the shape changes of one structured prune entry to `shapes` (see prune.py)."""
    module = model.get_submodule(path)

    def shrink(child: str, name: str, dim: int, by: int) -> None:
        entry = shapes.get(f"{path}.{child}", {}).get(name)
        if entry is not None:
            entry[0][dim] -= by

    amount = cfg.prune.amount
    if cfg.prune.structure == "heads":
        rows = count_to_remove(module.n_heads, amount) * module.head_dim
        for proj in ("q_proj", "k_proj", "v_proj"):
            shrink(proj, "weight", 0, rows)
            shrink(proj, "bias", 0, rows)
        shrink("out_proj", "weight", 1, rows)
    elif cfg.prune.structure == "neurons":
        removed = count_to_remove(module.fc1.out_features, amount)
        shrink("fc1", "weight", 0, removed)
        shrink("fc1", "bias", 0, removed)
        shrink("fc2", "weight", 1, removed)
    else:  # channels
        c = module.depthwise.in_channels
        removed = count_to_remove(c, amount)
        halves = 2 if has_glu(module) else 1
        shrink("pointwise1", "weight", 0, halves * removed)
        shrink("pointwise1", "bias", 0, halves * removed)
        shrink("depthwise", "weight", 0, removed)
        shrink("depthwise", "bias", 0, removed)
        for shape, _, _ in shapes.get(f"{path}.norm", {}).values():
            if shape == [c]:
                shape[0] -= removed
        shrink("pointwise2", "weight", 1, removed)


def _shrink_graph_group(model: nn.Module, group, cfg: LayerConfig,  # noqa: ANN001
                        shapes: Shapes, calib: Calibration | None) -> None:
    """Shape changes of pruning a group found from the graph (workbench.graph): every axis
    loses the slices of the units `compress` would remove. When every unit owns the same number
    of slices on each axis (heads, neurons, channels: the usual case), any choice of that many
    units gives the same shapes, so no importance is computed; a group of units of different
    sizes needs the choice compress makes (graph.surgery.choose, with gradients for Taylor)."""
    p = cfg.prune
    same_size = all(len({len(u[axis]) for u in group.units}) == 1 for axis in group.axes)
    if same_size:
        removed = list(range(count_to_remove(group.size, p.amount)))
    else:
        grads = taylor_gradients(model, calib or ()) if p.importance == "taylor" else None
        removed = choose(model, group, p.amount, p.importance, grads)
    for name, dim in group.axes:
        owner = _owner(model, name)
        entry = shapes.get(owner[0], {}).get(owner[1]) if owner else None
        if entry is not None:
            entry[0][dim] -= sum(len(group.units[u][(name, dim)]) for u in removed)


def _structured_parent(resolved: Mapping[str, LayerConfig], path: str
                       ) -> tuple[str, LayerConfig] | None:
    parent = path.rpartition(".")[0]
    cfg = resolved.get(parent)
    if cfg is not None and cfg.prune is not None and cfg.prune.structure in ("heads", "neurons"):
        return parent, cfg
    return None


def _needs_grads(resolved: Mapping[str, LayerConfig], path: str) -> bool:
    found = _structured_parent(resolved, path)
    return found is not None and found[1].prune.importance == "taylor"


def _pruned_weight(model: nn.Module, resolved: Mapping[str, LayerConfig], path: str,
                   grads: Mapping[str, torch.Tensor] | None) -> torch.Tensor:
    """The (out, in) weight of Linear `path` after its attention / FFN parent is pruned."""
    weight = model.get_submodule(path).weight.detach()
    found = _structured_parent(resolved, path)
    if found is None:
        return weight
    parent_path, cfg = found
    parent = model.get_submodule(parent_path)
    rel = None if grads is None else under(grads, parent_path)
    name = path.rpartition(".")[2]
    if cfg.prune.structure == "heads":
        keep = keep_indices(imp.head_importance(parent, cfg.prune.importance, rel),
                            cfg.prune.amount)
        dh = parent.head_dim
        index = (keep[:, None] * dh + torch.arange(dh)[None, :]).flatten()
        return weight[:, index] if name == "out_proj" else weight[index]
    keep = keep_indices(imp.neuron_importance(parent, cfg.prune.importance, rel), cfg.prune.amount)
    return weight[:, keep] if name == "fc2" else weight[keep]


# ---- measuring a compressed model --------------------------------------------------------
def _spec_of(layer: nn.Module) -> WeightSpec:
    """WeightSpec of a (possibly fake-quantized, possibly masked) Linear / Conv."""
    weight = layer.weight
    out, k = weight.shape[0], weight[0].numel()
    mask = getattr(layer, "weight_mask", None)
    act = getattr(layer, "act_quant", None)
    return WeightSpec(out, k, bits=getattr(layer, "weight_bits", 32),
                      granularity=getattr(layer, "granularity", "per_channel"),
                      symmetric=getattr(layer, "symmetric", True),
                      nnz=None if mask is None else int(mask.sum()), act_quant=act is not None)


def size_of_compressed(compressed: nn.Module, baseline: nn.Module) -> SizeReport:
    """Bytes of a model built by `compress`, read from its layers (quantization attributes,
    masks, factor shapes); `baseline` (the uncompressed model) gives the fp32 reference."""
    shapes = _shapes(compressed)
    base_bytes, baseline_params = _baseline(baseline)
    rows = []
    for path, tensors in shapes.items():
        module = compressed.get_submodule(path) if path else compressed
        built = next(((t.name, parts) for t in techniques() if t.weight_parts is not None
                      for parts in [t.weight_parts(module)] if parts is not None), None)
        if built is not None:                   # a layer a technique rebuilt (low rank: 2 Linears)
            name, parts = built
            rows.append(_row(path, name, [_spec_of(m) for m in parts.values()],
                             _bytes(tensors, tuple(f"{k}.weight" for k in parts)),
                             base_bytes.get(path, 0)))
        elif isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d)):
            kind = "linear" if isinstance(module, nn.Linear) else "conv"
            rows.append(_row(path, kind, [_spec_of(module)],
                             _bytes(tensors, (_weight_key(tensors) or "weight",)),
                             base_bytes.get(path, 0)))
        else:
            rows.append(_row(path, "tensors", [], _bytes(tensors), base_bytes.get(path, 0)))
    return _report(rows, baseline_params)
