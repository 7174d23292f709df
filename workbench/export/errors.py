"""Errors of the export (all WorkbenchError subclasses: the CLI prints them as one line, exit 2)."""
from __future__ import annotations

# ExportError is defined with the other errors (the ONNX toolbox, below export/, raises it too).
from workbench.errors import ExportError


class UnsupportedBitsError(ExportError):
    """`--strict` and a layer whose bit width (or grid) has no ONNX Runtime kernel."""


class OutputExistsError(ExportError):
    """The output folder exists and is not empty, and --force was not given."""
