"""Live figures: a place in the layout whose plotly FigureWidget is replaced on each refresh.

Why not update one FigureWidget in place (`with fig.batch_update(): ...`): plotly 7's
FigureWidget (an anywidget) applies in-place updates through transient `_py2js_*` messages,
and in Voila some views never apply them — measured here: in a Voila page with four
FigureWidgets updated together, one or two stayed at their first data every time, while the
same notebook in JupyterLab updated all four (plotly/plotly.py#4933 reports similar erratic
behaviour with several FigureWidgets). A new FigureWidget renders from its synced state, which
both front ends always apply. A refresh is still one batch: the new figure arrives as one
widget state.

The replaced widget is closed CLOSE_AFTER_S later, not at once. A Voila page loads every widget
state from the kernel after the notebook ran; a widget closed while it does so left the page at
"Loading widget..." for good (measured: a Voila page whose 10 boxes swapped and closed a child
every 20 ms from a worker thread stayed there in 2 of 7 loads; the same swaps without the
closes, 0 of 5; closing 20 s later, 0 of 1; Voila + chromium at load 7-10 on 2 cores). The
dashboard does exactly that while a page loads: the visible tab redraws when the first
evaluation arrives, the Recover tab on every training step. Closed later, a replaced figure is
long out of any page's loading by then; until then it only costs its (small) state.
"""
from __future__ import annotations

from collections.abc import Callable

import ipywidgets as widgets
import plotly.graph_objects as go

from workbench.ui.figures import TEMPLATE
from workbench.ui.view import kernel_loop

#: Seconds a replaced figure stays open before it is closed (module docstring).
CLOSE_AFTER_S = 120.0


def close_later(widget: widgets.Widget, delay: float | None = None) -> None:
    """Close `widget` `delay` seconds from now (default CLOSE_AFTER_S) on the kernel's event
    loop (safe from any thread), or at once outside a kernel (scripts, tests)."""
    loop = kernel_loop()
    if loop is None:
        widget.close()
        return
    wait = CLOSE_AFTER_S if delay is None else delay
    # add_callback is the loop's one thread-safe entry; call_later then runs on the loop
    loop.add_callback(lambda: loop.call_later(wait, widget.close))


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
        close_later(old)
