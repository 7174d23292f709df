"""Streaming panel: chunk size, look-ahead and left context sliders; first-partial latency, RTF
and cache memory on the chosen device at once (arithmetic over the latency model), and the WER
of the chunked simulation measured in the background (the newest setting wins; stale runs stop).
"""
from __future__ import annotations

import html
import threading

import ipywidgets as widgets
import plotly.graph_objects as go

from workbench.engine.jobs import INTERACTIVE, JOBS, Job
from workbench.engine.session import RUN_LOCK, plan_key
from workbench.evaluate import score
from workbench.ui.controller import Controller
from workbench.ui.figures import _layout, new_figure
from workbench.ui.live import FigureSlot
from workbench.ui.view import LazyView

CHUNKS_S = (0.25, 0.5, 1.0, 2.0, 4.0)
LOOKAHEADS_S = (0.0, 0.04, 0.1, 0.2, 0.4)
LEFTS_S = (1.0, 2.0, 4.0, 8.0)


def wer_vs_chunk(points: dict[float, float], full_wer: float | None, title: str) -> go.Figure:
    """Measured WER (%) per chunk size (s), with the full-context WER as a dashed line."""
    xs = sorted(points)
    fig = new_figure(go.Scatter(x=xs, y=[100 * points[x] for x in xs], mode="lines+markers",
                                name="chunked", hovertemplate="chunk %{x} s: WER %{y:.1f} %"
                                                              "<extra></extra>"))
    if full_wer is not None:
        fig.add_hline(y=100 * full_wer, line_dash="dash", annotation_text="full context")
    return _layout(fig, title, xaxis_title="chunk (s)", yaxis_title="WER %", xaxis_type="log",
                   showlegend=False)


class StreamingTab(LazyView):
    """Redraws (and starts a WER measurement) only while visible (see LazyView)."""

    def __init__(self, controller: Controller) -> None:
        super().__init__(controller.errors, "the streaming panel")
        self.controller = controller
        self.state = controller.state
        self.session = controller.session
        self.core = controller.core
        self.errors = controller.errors
        g = self.errors.guard
        self._costs: dict = {}
        self._wers: dict = {}
        self._generation = 0
        self._gen_lock = threading.Lock()
        self._job: Job | None = None
        self.chunk = widgets.SelectionSlider(options=CHUNKS_S, value=1.0, description="chunk s")
        self.lookahead = widgets.SelectionSlider(options=LOOKAHEADS_S, value=0.0,
                                                 description="look-ahead s")
        self.left = widgets.SelectionSlider(options=LEFTS_S, value=4.0, description="left s")
        for w, c in ((self.chunk, "wb-stream-chunk"), (self.lookahead, "wb-stream-lookahead"),
                     (self.left, "wb-stream-left")):
            w.add_class(c)
        self.readout = widgets.HTML()
        self.readout.add_class("wb-stream-readout")
        self.figure = FigureSlot(height=280)
        for w in (self.chunk, self.lookahead, self.left):
            w.observe(g("changing the streaming setting", lambda _c: self.invalidate()),
                      names=["value"])
        self.state.observe(g("updating the streaming panel", lambda _c: self.invalidate()),
                           names=["plan", "device"])
        self.widget = widgets.VBox([
            widgets.HTML("<b>Streaming</b> <span class='wb-muted'>chunked encoder with a KV "
                         "cache of the left context; latency simulated on the header's device "
                         "(± band); WER measured on the chunked simulation</span>"),
            widgets.HBox([self.chunk, self.lookahead, self.left]), self.readout,
            self.figure.widget])
        self.widget.add_class("wb-streaming")

    def draw(self) -> None:
        self.update()

    def config(self):
        from workbench.streaming import StreamConfig
        return StreamConfig.from_seconds(self.chunk.value, self.lookahead.value, self.left.value)

    def _cost(self, device: str):
        from workbench.streaming import step_cost

        plan = self.state.plan
        key = (device, plan_key(plan))
        if key not in self._costs:
            self._costs[key] = step_cost(self.session.baseline, device, plan)
        return self._costs[key]

    def update(self) -> None:
        from workbench.streaming import cache_bytes, supports_streaming

        if not supports_streaming(self.session.baseline):
            self.readout.value = (
                f"Not available for {html.escape(type(self.session.baseline).__name__)}: the "
                f"chunked simulation supports the Whisper-CTC family (conv stem, pre-norm blocks, "
                f"CTC head).")
            return
        cfg = self.config()
        device = self.state.device
        cost = self._cost(device)
        q = cfg.chunk + cfg.lookahead
        step_ms = cost.step_ms(q, cfg.left + q)
        first = 1e3 * cfg.algorithmic_latency_s + step_ms
        rtf = step_ms / (1e3 * cfg.chunk_s)
        key = (plan_key(self.state.plan), cfg)
        wer = self._wers.get(key)
        wer_txt = "measuring…" if wer is None else f"{100 * wer:.1f} % (measured)"
        self.readout.value = (
            f"<span class='wb-num' data-first-ms='{first:.3f}' data-rtf='{rtf:.5f}' "
            f"data-cache-bytes='{cache_bytes(self.session.baseline, cfg)}'></span>"
            f"On <b>{html.escape(device)}</b> (simulated ± {cost.band_pct:.0f} %): first partial "
            f"<b>{first:.0f} ms</b> (chunk + look-ahead + 20 ms stem = "
            f"{1e3 * cfg.algorithmic_latency_s:.0f} ms, + {step_ms:.1f} ms compute per chunk), "
            f"RTF {rtf:.3f}, cache {cache_bytes(self.session.baseline, cfg) / 1e3:.0f} kB. "
            f"WER {wer_txt}")
        self._draw()
        if wer is None:
            self._submit(key, cfg)

    def _draw(self) -> None:
        pk = plan_key(self.state.plan)
        cfg = self.config()
        points = {c.chunk_s: w for (k, c), w in self._wers.items()
                  if k == pk and c.lookahead == cfg.lookahead and c.left == cfg.left}
        self.figure.show(wer_vs_chunk(points, self.controller.session.baseline_full.wer
                                      if not self.state.plan.layers else None,
                                      f"WER vs chunk (look-ahead {cfg.lookahead_s:g} s, left "
                                      f"{cfg.left / 50:g} s)"))

    def _submit(self, key, cfg) -> None:
        with self._gen_lock:
            self._generation += 1
            gen = self._generation
        plan = self.state.plan
        measure = self.errors.guard("measuring streaming WER", self._measure)
        self._job = JOBS.submit(lambda job: measure(gen, key, cfg, plan), name="streaming",
                                priority=INTERACTIVE)

    def _measure(self, gen, key, cfg, plan) -> None:
        from workbench.streaming import chunked_transcripts

        with RUN_LOCK:
            if gen != self._generation:
                return
            model = self.session.compressed_model(plan)
            hyps = chunked_transcripts(model, self.session.eval_set, cfg)
        wer = score(self.session.eval_set.texts, hyps)[0]
        self._wers[key] = wer
        if gen == self._generation:
            self.invalidate()

    def wait(self, timeout: float | None = None) -> None:
        if self._job is not None:
            self._job.wait(timeout)
