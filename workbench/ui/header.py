"""The live metrics header: WER / CER, size, simulated latency, memory fit, device, audio length.

Each readout is an HTML widget with a stable class (wb-wer, wb-cer, wb-size, wb-latency,
wb-memory) whose inner `<span class="wb-num">` carries the exact numbers as data-* attributes
for tests: data-wer / data-cer / data-kind / data-plan, data-bytes / data-ratio, data-ms /
data-rtf / data-band, data-fits. The prose around them is for people.
"""
from __future__ import annotations

import html
import tempfile
from collections.abc import Callable
from pathlib import Path

import ipywidgets as widgets

from workbench.engine.session import plan_key
from workbench.latency.hardware import load_edge_device
from workbench.ui.error_area import ErrorArea
from workbench.ui.state import AppState

#: Audio lengths the control offers (seconds); latency grows with it, attention scores as T^2.
AUDIO_MIN, AUDIO_MAX, AUDIO_STEP = 1.0, 30.0, 0.5


#: What the header calls a result of each evaluation kind (quick subset / full set).
_KIND_WORD = {"quick": "estimate", "full": "measured"}


def _pp(x: float) -> str:
    return f"{100 * x:+.2f} pp"


class Header:
    """Readouts + device and audio-length controls. Observes the state; writes device/audio."""

    def __init__(self, state: AppState, devices: tuple[str, ...], errors: ErrorArea,
                 runtimes: Callable[[str, str | None], tuple[str, ...]] | None = None,
                 cores: Callable[[str, str | None], int] | None = None) -> None:
        self.state = state
        self._runtimes = runtimes or (lambda _d, _f=None: ())
        self._cores = cores or (lambda _d, _f=None: 1)
        self.wer = widgets.HTML()
        self.cer = widgets.HTML()
        self.size = widgets.HTML()
        self.latency = widgets.HTML()
        self.memory = widgets.HTML()
        for w, cls in ((self.wer, "wb-wer"), (self.cer, "wb-cer"), (self.size, "wb-size"),
                       (self.latency, "wb-latency"), (self.memory, "wb-memory")):
            w.add_class(cls)
            w.add_class("wb-card")
        self.device = widgets.Dropdown(options=list(devices), value=state.device,
                                       description="device", layout=widgets.Layout(width="220px"))
        self.device.add_class("wb-device")
        # runtime x threads of the chosen device ("default" = what its device file says), and
        # a user's own device file (JSON, schema in workbench.latency.hardware)
        self.runtime = widgets.Dropdown(description="runtime", layout=widgets.Layout(width="220px"))
        self.runtime.add_class("wb-runtime")
        self.threads = widgets.Dropdown(description="threads", layout=widgets.Layout(width="160px"))
        self.threads.add_class("wb-threads")
        self.device_file = widgets.FileUpload(accept=".json", multiple=False,
                                              description="device file")
        self.device_file.add_class("wb-device-file")
        self._fill_runtime_controls()
        self.runtime.observe(errors.guard("choosing the runtime", self._runtime_changed),
                             names=["value"])
        self.threads.observe(errors.guard("choosing threads", self._threads_changed),
                             names=["value"])
        self.device_file.observe(errors.guard("loading the device file", self._file_uploaded),
                                 names=["value"])
        self.audio = widgets.FloatSlider(value=state.audio_seconds, min=AUDIO_MIN, max=AUDIO_MAX,
                                         step=AUDIO_STEP, description="audio (s)",
                                         continuous_update=False, readout_format=".1f",
                                         layout=widgets.Layout(width="300px"))
        self.audio.add_class("wb-audio-seconds")
        self.device.observe(errors.guard("choosing the device", self._device_changed),
                            names=["value"])
        self.audio.observe(errors.guard("changing the audio length", self._audio_changed),
                           names=["value"])
        state.observe(errors.guard("showing WER", lambda _c: self._show_wer()),
                      names=["wer", "wer_pending", "plan"])
        state.observe(errors.guard("showing size", lambda _c: self._show_size()), names=["size"])
        state.observe(errors.guard("showing latency", lambda _c: self._show_latency()),
                      names=["latency"])
        state.observe(errors.guard("syncing controls", lambda _c: self._sync_controls()),
                      names=["device", "audio_seconds"])
        self.widget = widgets.VBox([
            widgets.HBox([self.wer, self.cer, self.size, self.latency, self.memory],
                         layout=widgets.Layout(flex_flow="row wrap")),
            widgets.HBox([self.device, self.runtime, self.threads, self.device_file, self.audio],
                         layout=widgets.Layout(flex_flow="row wrap")),
        ])
        self.widget.add_class("wb-header")
        self._show_wer()
        self._show_size()
        self._show_latency()

    # ---- controls -> state -------------------------------------------------------------------
    def _device_changed(self, change: dict) -> None:
        with self.state.hold_trait_notifications():
            self.state.runtime, self.state.threads, self.state.device_file = "", 0, ""
            self.state.device = change["new"]
        self._fill_runtime_controls()

    def _fill_runtime_controls(self) -> None:
        device, dfile = self.state.device, self.state.device_file or None
        runtimes = self._runtimes(device, dfile)
        self.runtime.options = [("default", "")] + [(r, r) for r in runtimes]
        self.runtime.value = self.state.runtime if self.state.runtime in runtimes else ""
        self.runtime.disabled = not runtimes
        cores = self._cores(device, dfile) if runtimes else 1
        self.threads.options = [("default", 0)] + [(str(n), n) for n in range(1, cores + 1)]
        self.threads.value = self.state.threads if self.state.threads <= cores else 0
        self.threads.disabled = not runtimes

    def _runtime_changed(self, change: dict) -> None:
        self.state.runtime = change["new"] or ""

    def _threads_changed(self, change: dict) -> None:
        self.state.threads = int(change["new"] or 0)

    def _file_uploaded(self, change: dict) -> None:
        """Validate the uploaded device file (DeviceFileError is shown), then price with it."""
        files = change["new"]
        if not files:
            return
        item = files[0] if isinstance(files, (list, tuple)) else next(iter(files.values()))
        name = Path(str(item.get("name") or "device.json")).name   # errors name the user's file
        path = Path(tempfile.mkdtemp(prefix="wb-device-")) / name
        path.write_bytes(bytes(item["content"]))
        load_edge_device(path=path)            # raises DeviceFileError naming the field
        with self.state.hold_trait_notifications():
            self.state.runtime, self.state.threads = "", 0
            self.state.device_file = str(path)
        self._fill_runtime_controls()

    def _audio_changed(self, change: dict) -> None:
        self.state.audio_seconds = float(change["new"])

    def _sync_controls(self) -> None:
        self.device.value = self.state.device
        self.audio.value = self.state.audio_seconds

    # ---- state -> readouts -------------------------------------------------------------------
    def _show_wer(self) -> None:
        s = self.state
        est = s.wer
        key = plan_key(s.plan)
        if est is None:
            self.wer.value = ("WER <b>…</b> <span class='wb-muted'>evaluating</span>"
                              f"<span class='wb-num' data-kind='pending' data-plan='{key}'></span>")
            self.cer.value = "CER <b>…</b>"
            return
        fresh = est.plan_key == key
        if not fresh:
            kind, label = "pending", "evaluating this plan… (showing the previous plan)"
        elif est.kind == "quick":
            kind, label = "quick", (f"estimate ± {100 * est.stderr:.2f} pp on {est.utterances} "
                                    f"utterances; full set running…")
        else:
            kind, label = "full", f"measured on {est.utterances} utterances"
        cls = "" if fresh and est.kind == "full" else " class='wb-pending'"
        num = (f"<span class='wb-num' data-wer='{est.wer:.10f}' data-cer='{est.cer:.10f}' "
               f"data-kind='{kind}' data-plan='{est.plan_key if fresh else key}' "
               f"data-result-plan='{est.plan_key}'></span>")
        self.wer.value = (f"<span{cls}>WER <b>{100 * est.wer:.2f} %</b> "
                          f"(Δ {_pp(est.wer_delta)} vs baseline)</span><br>"
                          f"<span class='wb-muted' title='{html.escape(est.source)}'>"
                          f"{html.escape(label)}</span>{num}")
        self.cer.value = (f"<span{cls}>CER <b>{100 * est.cer:.2f} %</b> "
                          f"(Δ {_pp(est.cer_delta)})</span><br>"
                          f"<span class='wb-muted'>{_KIND_WORD.get(kind, 'evaluating…')}</span>")

    def _show_size(self) -> None:
        r = self.state.size
        if r is None:
            self.size.value = "Size …"
            return
        self.size.value = (f"Size <b>{r.total_bytes / 1e6:.3f} MB</b> "
                           f"({r.ratio:.2f}× smaller)<br>"
                           f"<span class='wb-muted' title='{html.escape(r.note)}'>"
                           f"{r.total_bytes:,} bytes; fp32 {r.baseline_bytes / 1e6:.3f} MB</span>"
                           f"<span class='wb-num' data-bytes='{r.total_bytes}' "
                           f"data-ratio='{r.ratio:.6f}'></span>")

    def _show_latency(self) -> None:
        r = self.state.latency
        if r is None:
            self.latency.value = "Latency …"
            self.memory.value = ""
            return
        warn = "".join(f"<br><span class='wb-badge wb-fit-no wb-unsupported'>not as set: "
                       f"{html.escape(u)}</span>" for u in getattr(r, "unsupported", ()))
        runtime = f", {html.escape(r.runtime)}" + (f", {r.threads} thread(s)"
                                                    if getattr(r, "threads", 0) else "")
        self.latency.value = (
            f"Latency <b>{r.total_ms:.1f} ms</b> ± {r.error_band_pct:.0f} % "
            f"<span class='wb-muted'>simulated</span><br>"
            f"<span class='wb-muted' title='{html.escape(r.source)}'>on {html.escape(r.device)}"
            f"{runtime}, {r.audio_seconds:g} s audio, RTF {r.real_time_factor:.3f} "
            f"({r.low_ms:.1f}–{r.high_ms:.1f} ms; band: "
            f"{html.escape(getattr(r, 'band_source', '') or 'see the source')})</span>{warn}"
            f"<span class='wb-num' data-ms='{r.total_ms:.6f}' data-rtf='{r.real_time_factor:.6f}' "
            f"data-band='{r.error_band_pct:g}'></span>")
        fits = r.memory.fits
        badge = ("<span class='wb-badge wb-fit-yes'>fits in memory</span>" if fits else
                 "<span class='wb-badge wb-fit-no'>does not fit</span>")
        self.memory.value = (f"{badge}<br><span class='wb-muted'>"
                             f"{html.escape(r.memory.describe())}</span>"
                             f"<span class='wb-num' data-fits='{str(fits).lower()}'></span>")
