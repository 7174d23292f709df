"""workbench: compress transformer acoustic models for edge devices, and see what each choice costs.

`import workbench` loads the computational core only (torch, no ipywidgets / plotly / onnxruntime).
The UI lives in `workbench.ui`, the ONNX export in `workbench.export`.
"""
from workbench._version import __version__

__all__ = ["__version__"]
