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

import hashlib
import json
import pickle
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
    (e.g. a pruned and recovered model; see `workbench.compress.recover`), or None.
    The model itself is not touched (tensors are copied before the cast).
    """
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


def _read(path: Path) -> tuple[dict[str, Any], dict[str, Any], dict[str, torch.Tensor]]:
    """(model info, user metadata, state dict) of a checkpoint file, refusing anything else."""
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file.")
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
        except (RuntimeError, EOFError, OSError) as err:
            raise CheckpointError(f"{path}: not a readable torch checkpoint ({err}).") from None
        if not (isinstance(blob, dict) and blob.get("format") == FORMAT):
            raise CheckpointError(f"{path}: not a workbench checkpoint (no format '{FORMAT}'); "
                                  f"write one with workbench.models.save_checkpoint.")
        return blob["model"], blob.get("metadata") or {}, blob["state_dict"]
    from safetensors import SafetensorError, safe_open
    try:
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
            state = {name: f.get_tensor(name) for name in f.keys()}
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"{path}: not a readable safetensors file ({err}).") from None
    if header.get("format") != FORMAT or "model" not in header:
        raise CheckpointError(f"{path}: safetensors file without workbench metadata (format "
                              f"'{header.get('format')}', expected '{FORMAT}'); write checkpoints "
                              f"with workbench.models.save_checkpoint.")
    try:
        return json.loads(header["model"]), json.loads(header.get("metadata", "{}")), state
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{path}: corrupt metadata JSON in the header ({err}).") from None


def read_checkpoint_metadata(path: str | Path) -> dict[str, Any]:
    """The user metadata stored with a checkpoint (without building the model)."""
    return _read(Path(path))[1]


def load_checkpoint(path: str | Path, family: str | None = None) -> CTCModel:
    """Build the model a checkpoint describes and fill it: float32, eval mode.

    Refused with CheckpointError: pickled code, files we did not write, another family than
    `family` (when given), and missing / unexpected / mis-shaped tensors (first few named).
    """
    path = Path(path)
    info, _, state = _read(path)
    found = info.get("family")
    if family is not None and found != family:
        raise CheckpointError(f"{path}: holds a '{found}' model, expected '{family}'.")
    if found not in FAMILIES:
        raise CheckpointError(f"{path}: unknown model family '{found}'; known: {sorted(FAMILIES)}.")
    try:
        model = FAMILIES[found][0](make_config(found, info.get("config", {})))
    except WorkbenchError as err:
        raise CheckpointError(f"{path}: its config does not fit the '{found}' family: {err}") from None
    if info.get("structure") is not None:
        model = _with_structure(model, info["structure"], path)
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    misshaped = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in expected.items()
                 if k in state and state[k].shape != v.shape]
    if missing or unexpected or misshaped:
        parts = [f"{label} {names[:_SHOW]}" + (f" (+{len(names) - _SHOW} more)" if
                                               len(names) > _SHOW else "")
                 for label, names in (("missing", missing), ("unexpected", unexpected),
                                      ("mis-shaped (file vs model)", misshaped)) if names]
        raise CheckpointError(f"{path}: tensors do not match a '{found}' model with config "
                              f"{info.get('config')}: " + "; ".join(parts) + ".")
    model.load_state_dict({k: v.to(torch.float32) if v.is_floating_point() else v
                           for k, v in state.items()})
    return model.float().eval()


def _with_structure(model: CTCModel, structure: dict[str, Any], path: Path) -> CTCModel:
    """The family's model reshaped by a structural plan (weights are overwritten next)."""
    from workbench.compress import compress
    from workbench.plan import CompressionPlan
    from workbench.errors import PlanError
    try:
        plan = CompressionPlan.from_json(json.dumps(structure), source_name=f"{path} structure")
        if any(c.quant is not None or c.energy is not None for c in plan.layers.values()):
            raise PlanError("structure: holds quantization or an energy rank; a stored structure "
                            "has only pruning and explicit ranks.")
        return compress(model, plan, force=True)
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
