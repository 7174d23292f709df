"""Live figures (workbench.ui.live.FigureSlot): a refresh shows a new FigureWidget at once and
closes the replaced one later on the kernel's event loop, never while a Voila page may still be
loading widget states (the cause of pages stuck at "Loading widget...", see live.py)."""
from __future__ import annotations

import asyncio

import pytest

pytest.importorskip("ipywidgets")
go = pytest.importorskip("plotly.graph_objects")

from tornado.ioloop import IOLoop  # noqa: E402

import workbench.ui.live as live  # noqa: E402


def test_a_replaced_figure_is_closed_later_on_the_kernel_loop(monkeypatch):
    loop = IOLoop(make_current=False)       # what ipykernel's kernel runs its messages on
    monkeypatch.setattr(live, "kernel_loop", lambda: loop, raising=False)
    monkeypatch.setattr(live, "CLOSE_AFTER_S", 0.2, raising=False)
    try:
        slot = live.FigureSlot()
        first = slot.figure
        slot.show(go.Figure(go.Scatter(x=[1, 2], y=[3, 4])))
        assert slot.figure is not first and slot.widget.children == (slot.figure,)
        assert first.comm is not None       # still open: a loading page may ask for its state
        loop.run_sync(lambda: asyncio.sleep(0.05))
        assert first.comm is not None       # scheduled, not yet due
        loop.run_sync(lambda: asyncio.sleep(0.4))
        assert first.comm is None and slot.figure.comm is not None
    finally:
        loop.close()


def test_outside_a_kernel_the_replaced_figure_is_closed_at_once():
    slot = live.FigureSlot()
    first = slot.figure
    slot.show(go.Figure())
    assert first.comm is None and slot.figure.comm is not None
