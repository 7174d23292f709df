"""Errors the workbench raises on bad input. Each message names the file or field and the fix."""


class WorkbenchError(Exception):
    """Base class: anything the user can fix by changing an input."""


class DataError(WorkbenchError):
    """Bad audio, manifest or dataset input."""


class CheckpointError(WorkbenchError):
    """A checkpoint or weight file that cannot be loaded safely into the requested model."""


class ExportError(WorkbenchError):
    """The model or plan cannot be exported as asked (ONNX export, quantization, verification)."""


class PlanError(WorkbenchError):
    """A compression plan that is invalid, or made for another model."""


class DeviceError(WorkbenchError):
    """An unknown device name or a device profile missing a field."""


class ArgumentError(WorkbenchError):
    """A Python API verb called with an argument of the wrong type or out of range."""


class Cancelled(Exception):
    """The one cancellation of the package (not a bad input): raised inside a job (job.check())
    when it was cancelled, by a Session run made stale by a newer request, and by
    evaluate_conditions when its cancel() returns True. Here, at the bottom layer, so any layer
    can raise it; workbench.engine.jobs, engine.session and conditions re-export it."""
