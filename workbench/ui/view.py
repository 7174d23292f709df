"""Tabs that redraw only while visible, and after the header.

Every redraw of a hidden figure would cost kernel time and browser messages on each slider
step, and the header must update within a few hundred milliseconds. So a tab observes the state,
but a change only marks it dirty; a visible tab then draws once, *after* the event that changed
the state has been handled (a callback on the kernel's event loop), so the header's new numbers
go out first and several changes in one event (size, then latency) cost one redraw. Outside a
kernel (scripts, tests) the draw happens at once.
"""
from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from workbench.ui.error_area import ErrorArea


def kernel_loop() -> Any | None:
    """The running IPython kernel's tornado IOLoop, or None outside a kernel."""
    try:
        from ipykernel.kernelbase import Kernel
    except ImportError:
        return None
    if not Kernel.initialized():
        return None
    return getattr(Kernel.instance(), "io_loop", None)


class LazyView:
    """Subclasses implement `draw()` and call `invalidate()` when what they show has changed."""

    def __init__(self, errors: ErrorArea, name: str) -> None:
        self.errors = errors
        self.name = name
        self.visible = False
        self.dirty = True
        self._scheduled = False
        self._lock = threading.RLock()

    def invalidate(self) -> None:
        self.dirty = True
        if self.visible:
            self._schedule()

    def set_visible(self, visible: bool) -> None:
        self.visible = visible
        if visible and self.dirty:
            self._schedule()

    def _schedule(self) -> None:
        loop = kernel_loop()
        if loop is None:
            self.render()
            return
        with self._lock:
            if self._scheduled:
                return
            self._scheduled = True
        loop.add_callback(self._run_scheduled)  # thread-safe: workers may call invalidate()

    def _run_scheduled(self) -> None:
        with self._lock:
            self._scheduled = False
        if self.dirty and self.visible:
            self.render()

    def render(self) -> None:
        """Draw now (errors go to the error area)."""
        with self._lock:  # a worker-thread result and a UI event may both ask to draw
            self.dirty = False
            self.errors.guard(f"drawing {self.name}", self.draw)()

    def draw(self) -> None:
        raise NotImplementedError


def run_in_kernel(fn: Callable[[], Any]) -> None:
    """Run `fn` on the kernel's event loop (as if from a cell: how a worker thread hands over
    building new widgets), or at once outside a kernel (scripts, tests)."""
    loop = kernel_loop()
    if loop is None:
        fn()
    else:
        loop.add_callback(fn)
