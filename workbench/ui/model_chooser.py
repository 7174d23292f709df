"""Pick the shipped model the dashboard works on: the CTC demo or the full Whisper tiny.en.

    from workbench.ui import ModelChooser
    ModelChooser().show()          # in a notebook (or let it end a cell)

The two apps are built on first choice, off the UI thread as a job of the engine's queue, holding
the run lock like any model run (the Whisper session evaluates its baseline first: ~10-30 s on
2 cores; the other app's slider evaluations wait instead of running beside it), and kept:
switching back is instant and keeps each app's plan and history. A banner above the app names
the model every readout belongs to.
"""
from __future__ import annotations

import html
import threading
from collections.abc import Callable
from typing import Any

import ipywidgets as widgets

from workbench.checks import check_choice
from workbench.engine.jobs import JOBS, RUN_LOCK, USER, Job
from workbench.ui.error_area import ErrorArea

#: (label, key) of each shipped model; the labels say what each is good for.
MODELS = (("CTC demo: fastest feedback", "ctc"), ("Whisper tiny.en: real decoder", "whisper"))
DESCRIPTIONS = {
    "ctc": "Whisper tiny.en encoder + a small CTC head trained here (greedy CTC): evaluations "
           "take a fraction of a second, but it knows one speaker best.",
    "whisper": "the full Whisper tiny.en (encoder + autoregressive decoder, greedy, KV cache) as "
               "released: the model people deploy; each evaluation decodes token by token.",
}


def _default_builders(eval_limit: int | None) -> dict[str, Callable[[], Any]]:
    def ctc():
        from workbench.ui.app import Workbench
        return Workbench.demo(eval_limit=eval_limit)

    def whisper():
        from workbench.ui.whisper_app import WhisperWorkbench
        return WhisperWorkbench.demo(eval_limit=eval_limit)

    return {"ctc": ctc, "whisper": whisper}


class ModelChooser:
    """Toggle between the shipped models; `app` is the app of the current choice (or None
    while it is being built)."""

    def __init__(self, initial: str = "ctc", *, eval_limit: int | None = None,
                 builders: dict[str, Callable[[], Any]] | None = None) -> None:
        keys = tuple(k for _, k in MODELS)
        check_choice(initial, keys, "ModelChooser", "initial")
        self._builders = builders or _default_builders(eval_limit)
        self._apps: dict[str, Any] = {}
        self._jobs: dict[str, Job] = {}
        self._lock = threading.Lock()
        self.errors = ErrorArea()
        self.toggle = widgets.ToggleButtons(options=list(MODELS), value=initial,
                                            description="model")
        self.toggle.style.button_width = "230px"     # the labels say what each model is for
        self.toggle.add_class("wb-model-chooser")
        self.banner = widgets.HTML()
        self.banner.add_class("wb-model-banner")
        self.body = widgets.Box()
        self.body.add_class("wb-model-body")
        self.widget = widgets.VBox([self.toggle, self.banner, self.errors.widget, self.body])
        self.widget.add_class("wb-chooser")
        self.toggle.observe(self.errors.guard("switching the model", self._chosen),
                            names=["value"])
        self._chosen({"new": initial})

    @property
    def choice(self) -> str:
        return self.toggle.value

    @property
    def app(self) -> Any | None:
        return self._apps.get(self.choice)

    def show(self) -> widgets.Widget:
        return self.widget

    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        return self.widget._repr_mimebundle_(**kwargs)

    def wait(self, timeout: float = 300.0) -> Any:
        """Block until the current choice's app is built (scripts, tests); returns it."""
        job = self._jobs.get(self.choice)
        if job is not None:
            job.wait(timeout)
        return self.app

    # ---- internals -------------------------------------------------------------------------
    def _label(self, key: str) -> str:
        return next(label for label, k in MODELS if k == key)

    def _chosen(self, change: dict) -> None:
        key = change["new"]
        self.banner.value = (f"Every readout below is for <b class='wb-model-name' "
                             f"data-model='{key}'>{html.escape(self._label(key))}</b>: "
                             f"{html.escape(DESCRIPTIONS[key])}")
        with self._lock:   # the build thread swaps the body under the same lock
            app = self._apps.get(key)
            if app is not None:
                self.body.children = [app.widget]
                return
            self.body.children = [self._loading(key)]
            if not (key in self._jobs and self._jobs[key].running):
                self._jobs[key] = JOBS.submit(lambda job, k=key: self._build(k),
                                              name=f"build {key}", priority=USER)

    def _loading(self, key: str) -> widgets.Widget:
        w = widgets.HTML(f"<span class='wb-muted'>Loading {html.escape(self._label(key))} and "
                         f"evaluating its baseline on the held-out set…</span>")
        w.add_class("wb-model-loading")
        return w

    def _build(self, key: str) -> None:
        try:
            with RUN_LOCK.hold(USER):   # building evaluates the baseline: a model run
                app = self._builders[key]()
        except BaseException as err:   # shown in the chooser's error area, never lost
            with self._lock:
                if self.toggle.value == key:
                    self.body.children = []
            self.errors.show(err, f"loading {self._label(key)}")
            return
        with self._lock:
            self._apps[key] = app
            if self.toggle.value == key:
                self.body.children = [app.widget]
