"""Checkpoints: weights in safetensors, the model's family + config (and user metadata) as JSON in
the safetensors header; or a weights-only `.pt`. Loading never runs pickled code.

File layout (safetensors): tensors = the model's state dict (parameters + persistent buffers),
header metadata (str -> str):
    "format": "workbench-ctc/1"
    "model":  json of CTCModel.describe() = {"family": ..., "config": {...}}
    "metadata": json of the caller's metadata dict (e.g. training recipe, metrics)
    "structure": (optional) json of a CompressionPlan holding only structural entries (pruned
                 heads / neurons / channels, explicit low ranks): how the stored model's shapes
                 differ from its family + config. Loading builds the model, applies it (which
                 units go does not matter, only how many), then fills every tensor from the file.
The `.pt` variant is `torch.save` of {"format", "model", "metadata", "state_dict"} with only plain
containers and tensors, so it loads under `torch.load(weights_only=True)`.
"""
from __future__ import annotations

import copy
import hashlib
import json
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from workbench.errors import CheckpointError, WorkbenchError
from workbench.models.base import CTCModel
from workbench.models.registry import FAMILIES, make_config

FORMAT = "workbench-ctc/1"
_SHOW = 5  # offending tensor names listed in an error


def save_checkpoint(model: CTCModel, path: str | Path, metadata: dict[str, Any] | None = None,
                    dtype: torch.dtype = torch.float16, structure: Any = None) -> Path:
    """Write `model` to `path` (`.safetensors`, or `.pt`); floating tensors stored as `dtype`.

    `structure`: the structural CompressionPlan that turned the family's model into this one
    (e.g. a pruned and recovered model; see `workbench.compress.distill`), or None.
    The model itself is not touched (tensors are copied before the cast).
    """
    if not isinstance(model, CTCModel):
        raise CheckpointError(f"save_checkpoint(model=...): expected a workbench CTC model "
                              f"(WhisperCTC / ConformerCTC), got {type(model).__name__}.")
    if not isinstance(path, str | Path) or not str(path):
        raise CheckpointError(f"save_checkpoint(path=...): expected a file path, got "
                              f"{type(path).__name__} {path!r:.40}.")
    if dtype not in (torch.float16, torch.float32):
        raise WorkbenchError(f"dtype: checkpoints store float16 or float32, got {dtype}.")
    path = Path(path)
    info = model.describe()
    if structure is not None:
        info = {**info, "structure": json.loads(structure.to_json())}
    try:
        meta_json = json.dumps(metadata or {}, sort_keys=True)
    except TypeError as err:
        raise WorkbenchError(f"metadata: must be JSON-serialisable plain data ({err}).") from None
    state = {name: (t.detach().to("cpu", dtype) if t.is_floating_point() else t.detach().cpu())
             .clone().contiguous() for name, t in model.state_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".pt":
        torch.save({"format": FORMAT, "model": info, "metadata": json.loads(meta_json),
                    "state_dict": state}, path)
    else:
        from safetensors.torch import save_file
        save_file(state, str(path), metadata={"format": FORMAT, "model": json.dumps(info),
                                              "metadata": meta_json})
    return path


class _Tensors:
    """A checkpoint's tensors: names, shapes and dtypes known from the header before any tensor
    is read (safetensors), so a bad file is refused before memory is spent on it."""

    def __init__(self, shapes: dict[str, tuple[int, ...]], floating: dict[str, bool],
                 load: Callable[[], dict[str, torch.Tensor]]) -> None:
        self.shapes, self.floating, self.load = shapes, floating, load


_FLOAT_DTYPES = {"F16", "F32", "F64", "BF16", "F8_E4M3", "F8_E5M2"}


def _read(path: Path) -> tuple[Any, dict[str, Any], _Tensors]:
    """(model info, user metadata, tensors) of a checkpoint file, refusing anything else."""
    if not path.is_file():
        what = "a folder, not a checkpoint file" if path.is_dir() else "no such checkpoint file"
        raise CheckpointError(f"{path}: {what}.")
    if path.suffix == ".pt":
        try:
            blob = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as err:
            # torch names the forbidden global ("Unsupported global: GLOBAL x") when the
            # pickle would import code; any other weights-only failure is a broken file.
            if "unsupported global" not in str(err).lower():
                raise CheckpointError(f"{path}: not a readable torch checkpoint (the weights-only "
                                      f"loader cannot parse it: corrupt, or not a torch file).") from None
            raise CheckpointError(
                f"{path}: contains pickled code, not a weights-only checkpoint; refusing to load "
                f"it. Re-save it with workbench.models.save_checkpoint.") from None
        except (RuntimeError, EOFError, OSError, ValueError) as err:
            raise CheckpointError(f"{path}: not a readable torch checkpoint ({err}).") from None
        if not (isinstance(blob, dict) and blob.get("format") == FORMAT):
            raise CheckpointError(f"{path}: not a workbench checkpoint (no format '{FORMAT}'); "
                                  f"write one with workbench.models.save_checkpoint.")
        state = blob.get("state_dict")
        if not isinstance(state, dict) or not all(
                isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
            raise CheckpointError(f"{path}: 'state_dict' must map tensor names to tensors.")
        return (blob.get("model"), blob.get("metadata") or {},
                _Tensors({k: tuple(v.shape) for k, v in state.items()},
                         {k: v.is_floating_point() for k, v in state.items()}, lambda: state))
    from safetensors import SafetensorError, safe_open
    try:
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
            shapes, floating = {}, {}
            for name in f.keys():
                piece = f.get_slice(name)
                shapes[name] = tuple(piece.get_shape())
                floating[name] = piece.get_dtype() in _FLOAT_DTYPES
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise CheckpointError(f"{path}: not a readable safetensors file ({err}).") from None

    def load() -> dict[str, torch.Tensor]:
        try:
            with safe_open(str(path), framework="pt") as f:
                return {name: f.get_tensor(name) for name in f.keys()}
        except (SafetensorError, OSError, ValueError, RuntimeError) as err:
            raise CheckpointError(f"{path}: tensors cannot be read ({err}).") from None

    if header.get("format") != FORMAT or "model" not in header:
        raise CheckpointError(f"{path}: safetensors file without workbench metadata (format "
                              f"'{header.get('format')}', expected '{FORMAT}'); write checkpoints "
                              f"with workbench.models.save_checkpoint.")
    try:
        return (json.loads(header["model"]), json.loads(header.get("metadata", "{}")),
                _Tensors(shapes, floating, load))
    except (ValueError, RecursionError) as err:  # JSONDecodeError, 5,000-digit ints, nesting
        raise CheckpointError(f"{path}: corrupt metadata JSON in the header "
                              f"({str(err)[:120]}).") from None


def read_checkpoint_metadata(path: str | Path) -> dict[str, Any]:
    """The user metadata stored with a checkpoint (without building the model)."""
    return _read(Path(path))[1]


def load_checkpoint(path: str | Path, family: str | None = None,
                    base: CTCModel | None = None) -> CTCModel:
    """Build the model a checkpoint describes and fill it: float32, eval mode.

    `base`: for a model whose architecture is the caller's code, which a checkpoint does not
    store (one adapted by workbench.byo: family "adapted"), the unpruned model the file was
    saved from, rebuilt by the caller (e.g. `adapt(Conformer(...))`); a copy of it gets the
    stored structure and the file's tensors (`base` is not changed). Its family and config must
    be the file's.

    Refused with CheckpointError: pickled code, files we did not write, another family than
    `family` (when given), a config with wrong types / out-of-range sizes (checked, and the model
    sized on the meta device, before anything is allocated), missing / unexpected / mis-shaped
    tensors and integer tensors for float parameters (from the header, before tensors are read;
    first few named), and NaN / Inf weights.
    """
    if not isinstance(path, str | Path):
        raise CheckpointError(f"load_checkpoint(path=...): expected a file path, got "
                              f"{type(path).__name__}.")
    if family is not None and family not in FAMILIES:
        raise CheckpointError(f"load_checkpoint(family={family!r:.40}): unknown family; known: "
                              f"{sorted(FAMILIES)} (or None to accept the file's).")
    path = Path(path)
    info, _, tensors = _read(path)
    if not isinstance(info, dict):
        raise CheckpointError(f"{path}: header 'model' must be an object with 'family' and "
                              f"'config', got {type(info).__name__}.")
    found = info.get("family")
    if family is not None and found != family:
        raise CheckpointError(f"{path}: holds a '{found}' model, expected '{family}'.")
    if base is not None:
        return _fill(path, _on_base(path, info, base), tensors)
    if found == ADAPTED:
        source = (info.get("config") or {}).get("source", "your model") if isinstance(
            info.get("config"), dict) else "your model"
        raise CheckpointError(
            f"{path}: holds a model adapted by workbench.byo ({source!s:.60}), whose architecture "
            f"is your code, not stored in a checkpoint, so it cannot be rebuilt from the file "
            f"alone; in Python: model = workbench.models.load_checkpoint(path, "
            f"base=workbench.adapt(<your model, as built before adapting>)), then "
            f"workbench.export.apply_plan(model, plan, out).")
    if not isinstance(found, str) or found not in FAMILIES:
        raise CheckpointError(f"{path}: unknown model family {found!r:.60}; known: "
                              f"{sorted(FAMILIES)}.")
    try:
        cfg = make_config(found, info.get("config", {}))
    except WorkbenchError as err:
        raise CheckpointError(f"{path}: its config does not fit the '{found}' family: {err}") from None
    if info.get("structure") is not None:  # a pruned model: shapes are known once it is built
        model = _with_structure(FAMILIES[found][0](cfg), info["structure"], path)
        expected = {k: (tuple(v.shape), v.is_floating_point())
                    for k, v in model.state_dict().items()}
    else:
        with torch.device("meta"):  # shapes without memory
            meta = FAMILIES[found][0](cfg)
        expected = {k: (tuple(v.shape), v.is_floating_point())
                    for k, v in meta.state_dict().items()}
        model = None
    _check_tensors(path, found, info.get("config"), expected, tensors)
    return _fill(path, model if model is not None else FAMILIES[found][0](cfg), tensors,
                 checked=True)


#: The family of a model adapted by workbench.byo (AdaptedCTC.family): its architecture is the
#: caller's code, so only load_checkpoint(base=...) rebuilds it.
ADAPTED = "adapted"


def _on_base(path: Path, info: dict[str, Any], base: CTCModel) -> CTCModel:
    """A copy of `base` with the file's stored structure, after checking it is the file's
    family and config."""
    if not isinstance(base, CTCModel):
        raise CheckpointError(f"load_checkpoint(base=...): expected a workbench CTC model (e.g. "
                              f"workbench.adapt(your model)), got {type(base).__name__}.")
    described = json.loads(json.dumps(base.describe()))     # plain data, as the file holds it
    if (described["family"], described["config"]) != (info.get("family"), info.get("config")):
        raise CheckpointError(f"{path}: saved from a '{info.get('family')}' model with config "
                              f"{info.get('config')}, but base= is a '{described['family']}' "
                              f"model with config {described['config']}; rebuild the model the "
                              f"file was saved from (same sizes, same adapt(...) arguments).")
    model = copy.deepcopy(base)
    if info.get("structure") is not None:
        model = _with_structure(model, info["structure"], path)
    return model


def _fill(path: Path, model: CTCModel, tensors: _Tensors, checked: bool = False) -> CTCModel:
    """`model` filled with the file's tensors (checked against its state dict first unless
    `checked`), refusing NaN / Inf: float32, eval mode."""
    if not checked:
        info = model.describe()
        _check_tensors(path, info["family"], info["config"],
                       {k: (tuple(v.shape), v.is_floating_point())
                        for k, v in model.state_dict().items()}, tensors)
    state = tensors.load()
    bad = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise CheckpointError(f"{path}: {len(bad)} tensor(s) hold NaN or infinite values, e.g. "
                              f"{bad[:_SHOW]}; the checkpoint is corrupt (training diverged?). "
                              f"Use an earlier checkpoint.")
    model.load_state_dict({k: v.to(torch.float32) if v.is_floating_point() else v
                           for k, v in state.items()})
    return model.float().eval()


def _check_tensors(path: Path, found: str, config: Any,
                   expected: dict[str, tuple[tuple[int, ...], bool]], tensors: _Tensors) -> None:
    missing = [k for k in expected if k not in tensors.shapes]
    unexpected = [k for k in tensors.shapes if k not in expected]
    misshaped = [f"{k} {tensors.shapes[k]} vs {shape}" for k, (shape, _) in expected.items()
                 if k in tensors.shapes and tensors.shapes[k] != shape]
    wrong_dtype = [f"{k} ({'float' if tensors.floating[k] else 'integer'} in the file, "
                   f"{'float' if is_float else 'integer'} in the model)"
                   for k, (_, is_float) in expected.items()
                   if k in tensors.floating and tensors.floating[k] != is_float]
    if missing or unexpected or misshaped or wrong_dtype:
        parts = [f"{label} {names[:_SHOW]}" + (f" (+{len(names) - _SHOW} more)" if
                                               len(names) > _SHOW else "")
                 for label, names in (("missing", missing), ("unexpected", unexpected),
                                      ("mis-shaped (file vs model)", misshaped),
                                      ("wrong dtype", wrong_dtype)) if names]
        raise CheckpointError(f"{path}: tensors do not match a '{found}' model with config "
                              f"{config}: " + "; ".join(parts) + ".")


#: (family's model, stored structure as JSON data, source name for errors) -> the model reshaped.
#: Reshaping is compress's work, a layer above this one: workbench.compress registers it when it
#: is imported (which `import workbench` does), so this layer never imports compress.
StructureLoader = Callable[[CTCModel, dict[str, Any], str], CTCModel]
_structure_loader: StructureLoader | None = None


def register_structure_loader(loader: StructureLoader) -> None:
    """Set how a stored structure reshapes a model (workbench.compress.apply calls this)."""
    global _structure_loader
    _structure_loader = loader


def _with_structure(model: CTCModel, structure: dict[str, Any], path: Path) -> CTCModel:
    """The family's model reshaped by a structural plan (weights are overwritten next)."""
    if _structure_loader is None:
        raise CheckpointError(f"{path}: holds a pruned structure, which workbench.compress "
                              f"applies; `import workbench` (or workbench.compress) first.")
    try:
        return _structure_loader(model, structure, f"{path} structure")
    except WorkbenchError as err:
        raise CheckpointError(f"{path}: its stored structure cannot be applied: {err}") from None


def model_fingerprint(model: CTCModel) -> str:
    """sha256 over family + config + sorted (parameter name, shape): identifies an architecture,
    not its weight values, so a compression plan can check it was made for this model."""
    info = model.describe()
    params = sorted((name, list(p.shape)) for name, p in model.named_parameters())
    blob = json.dumps({"family": info["family"], "config": info["config"], "params": params},
                      sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()
