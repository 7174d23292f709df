"""The export's per-layer runtime decisions, asked of the technique registry.

A technique applied by the runtime (its `export` is "runtime": quantization) brings one handler per
runtime, (path, target kind, setting) -> Decision, in its `runtime_exports` (the quantization
tables: workbench.compress.techniques.quantization_runtime). The export asks for them here, so a
runtime technique without a handler for the chosen runtime is refused plainly, never dropped.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from workbench.compress.techniques import technique, techniques
from workbench.compress.techniques.quantization_runtime import Decision, describe_quant
from workbench.export.errors import ExportError
from workbench.plan import LayerConfig, QuantConfig

#: Runtimes the workbench exports to (`workbench apply --runtime`).
RUNTIMES = ("onnxruntime", "executorch")


def runtime_handler(name: str, runtime: str) -> Callable[[str, str, Any], Decision]:
    """Technique `name`'s decision function for `runtime` (ExportError if it has none)."""
    handler = technique(name).runtime_exports.get(runtime)
    if handler is None:
        raise ExportError(f"technique {name!r} has no {runtime} export (its handler registers "
                          f"none in runtime_exports); remove it from the plan to export, or "
                          f"evaluate it in simulation only.")
    return handler


def check_runtime_techniques(resolved: Mapping[str, LayerConfig], runtime: str) -> None:
    """Every runtime-applied technique the plan sets must have a handler for `runtime`."""
    for t in techniques():
        if t.export != "runtime":
            continue
        paths = [p for p, cfg in resolved.items() if t.setting(cfg) is not None]
        if paths:
            try:
                runtime_handler(t.name, runtime)
            except ExportError as err:
                raise ExportError(f"{paths[0]}{' ...' if len(paths) > 1 else ''}: {err}") from None


def decide(path: str, kind: str, q: QuantConfig) -> Decision:
    """How one quantized layer runs in ONNX Runtime (the quant technique's handler)."""
    return runtime_handler("quant", "onnxruntime")(path, kind, q)


__all__ = ["RUNTIMES", "Decision", "check_runtime_techniques", "decide", "describe_quant",
           "runtime_handler"]
