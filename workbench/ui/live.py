"""Live figures: a place in the layout whose plotly FigureWidget is replaced on each refresh.

Why not update one FigureWidget in place (`with fig.batch_update(): ...`): plotly 7's
FigureWidget (an anywidget) applies in-place updates through transient `_py2js_*` messages,
and in Voila some views never apply them — measured here: in a Voila page with four
FigureWidgets updated together, one or two stayed at their first data every time, while the
same notebook in JupyterLab updated all four (plotly/plotly.py#4933 reports similar erratic
behaviour with several FigureWidgets). A new FigureWidget renders from its synced state, which
both front ends always apply. A refresh is still one batch: the new figure arrives as one
widget state, and the old widget is closed.
"""
from __future__ import annotations

from collections.abc import Callable

import ipywidgets as widgets
import plotly.graph_objects as go

from workbench.ui.figures import TEMPLATE


class FigureSlot:
    """`widget` is the place in the layout; `figure` the FigureWidget it shows now."""

    def __init__(self, height: int = 320,
                 on_create: Callable[[go.FigureWidget], None] | None = None) -> None:
        self._on_create = on_create
        self.figure = go.FigureWidget(layout={"template": TEMPLATE, "height": height})
        self.widget = widgets.Box([self.figure],
                                  layout=widgets.Layout(width="100%", min_width="0"))
        self.widget.add_class("wb-figure")

    def show(self, figure: go.Figure) -> None:
        """Show `figure` (built by workbench.ui.figures) in place of the current one."""
        new = go.FigureWidget(figure)
        if self._on_create is not None:
            self._on_create(new)
        old, self.figure = self.figure, new
        self.widget.children = (new,)
        old.close()
