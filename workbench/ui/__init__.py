"""The interactive workbench (ipywidgets + plotly). Importing this imports ipywidgets; the core
(`import workbench`) never does.

    from workbench.ui import Workbench
    Workbench.demo().show()
    ModelChooser().show()          # the same, with a choice of the CTC demo or full Whisper

`Workbench` is loaded on first use, so `from workbench.ui import figures` (the lessons' figure
builders) does not pull in the whole app.
"""
from __future__ import annotations

import importlib
from typing import Any

__all__ = ["Workbench", "demo_inputs", "ModelChooser", "WhisperWorkbench"]
_HOME = {"ModelChooser": "model_chooser", "WhisperWorkbench": "whisper_app"}


def __getattr__(name: str) -> Any:
    if name in __all__:
        module = importlib.import_module(f"workbench.ui.{_HOME.get(name, 'app')}")
        return getattr(module, name)
    raise AttributeError(f"module 'workbench.ui' has no attribute {name!r}")
