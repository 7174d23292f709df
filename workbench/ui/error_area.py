"""The app's error area: every callback runs under `ErrorArea.guard`, so an error is shown, not lost.

Why not an `ipywidgets.Output` capture: callbacks also run on the evaluation worker thread, where
an Output context cannot tell which cell it belongs to and output can go astray. An HTML widget
whose value we set works the same from any thread, in JupyterLab and in Voila.

    errors = ErrorArea()
    slider.observe(errors.guard("bits of blocks.0.mlp.fc1", on_change), names=["value"])

Expected, user-fixable errors (`WorkbenchError`) show their message; anything else also shows
its traceback (folded), since it is a bug to report.
"""
from __future__ import annotations

import functools
import html
import threading
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import ipywidgets as widgets

from workbench.errors import WorkbenchError

F = TypeVar("F", bound=Callable[..., Any])

#: How many errors stay on screen (the oldest scroll away).
MAX_SHOWN = 5


@dataclass(frozen=True)
class ShownError:
    where: str
    type_name: str
    message: str
    traceback: str


class ErrorArea:
    """A box of recent errors (class `wb-error`), hidden while there is none, with a clear button."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.errors: list[ShownError] = []
        self._html = widgets.HTML()
        self._html.add_class("wb-error-text")
        clear = widgets.Button(description="dismiss", layout=widgets.Layout(width="90px"))
        clear.add_class("wb-error-dismiss")
        clear.on_click(self.guard("dismiss errors", lambda _b: self.clear()))
        self.widget = widgets.HBox([self._html, clear],
                                   layout=widgets.Layout(display="none"))
        self.widget.add_class("wb-error")

    @property
    def text(self) -> str:
        """Plain text of the errors shown (what a user reads), newest last."""
        return "\n".join(f"{e.where}: {e.type_name}: {e.message}" for e in self.errors)

    def show(self, err: BaseException, where: str) -> None:
        """Display `err` raised while doing `where` (a short phrase the user recognises)."""
        tb = "" if isinstance(err, WorkbenchError) else "".join(
            traceback.format_exception(type(err), err, err.__traceback__))
        with self._lock:
            self.errors = [*self.errors, ShownError(where, type(err).__name__, str(err), tb)]
            self.errors = self.errors[-MAX_SHOWN:]
            self._render()

    def clear(self) -> None:
        with self._lock:
            self.errors = []
            self._render()

    def guard(self, where: str, fn: F) -> F:
        """`fn` wrapped so an exception it raises is shown here (and not re-raised)."""
        @functools.wraps(fn)
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            try:
                return fn(*args, **kwargs)
            except Exception as err:  # shown to the user: that is the point of the area
                self.show(err, where)
                return None
        return wrapped  # type: ignore[return-value]

    def _render(self) -> None:
        parts = []
        for e in self.errors:
            body = (f"<b>{html.escape(e.where)}</b>: {html.escape(e.type_name)}: "
                    f"{html.escape(e.message)}")
            if e.traceback:
                body += (f"<details><summary>traceback</summary>"
                         f"<pre>{html.escape(e.traceback)}</pre></details>")
            parts.append(f"<div class='wb-error-box'>{body}</div>")
        self._html.value = "".join(parts)
        self.widget.layout.display = "flex" if self.errors else "none"
