"""The interactive workbench (ipywidgets + plotly). Importing this imports ipywidgets; the core
(`import workbench`) never does.

    from workbench.ui import Workbench
    Workbench.demo().show()

`Workbench` is loaded on first use, so `from workbench.ui import figures` (the lessons' figure
builders) does not pull in the whole app.
"""
from __future__ import annotations

from typing import Any

__all__ = ["Workbench", "demo_inputs"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from workbench.ui import app
        return getattr(app, name)
    raise AttributeError(f"module 'workbench.ui' has no attribute {name!r}")
