"""Listen tab: pick an utterance, play it, read reference / baseline / compressed transcripts
with the word errors marked (substitutions, insertions, deletions from jiwer's alignment).

Transcripts come from the Session: the baseline's full-set hypotheses and the current plan's
full-set result once it has arrived (the quick estimate covers a subset only).
"""
from __future__ import annotations

import html
import io

import ipywidgets as widgets
import jiwer
import soundfile

from workbench.data import load_audio
from workbench.engine.session import plan_key
from workbench.ui.controller import Controller
from workbench.ui.view import LazyView


def marked_words(reference: str, hypothesis: str) -> str:
    """HTML of `hypothesis` with its word errors against `reference` marked:
    substitutions (class wb-hyp-sub, the reference word in the title), insertions
    (wb-err-ins), deletions (the missing reference word, struck through, wb-err-del)."""
    if not reference.strip() or not hypothesis.strip():
        return html.escape(hypothesis) or "<i>(empty)</i>"
    out = jiwer.process_words(reference, hypothesis)
    ref, hyp = out.references[0], out.hypotheses[0]
    parts: list[str] = []
    for chunk in out.alignments[0]:
        if chunk.type == "equal":
            parts += [html.escape(w) for w in hyp[chunk.hyp_start_idx:chunk.hyp_end_idx]]
        elif chunk.type == "substitute":
            for r, h in zip(ref[chunk.ref_start_idx:chunk.ref_end_idx],
                            hyp[chunk.hyp_start_idx:chunk.hyp_end_idx]):
                parts.append(f"<span class='wb-hyp-sub' title='reference: {html.escape(r)}'>"
                             f"{html.escape(h)}</span>")
        elif chunk.type == "insert":
            parts += [f"<span class='wb-err-ins' title='inserted'>{html.escape(w)}</span>"
                      for w in hyp[chunk.hyp_start_idx:chunk.hyp_end_idx]]
        else:  # delete
            parts += [f"<span class='wb-err-del' title='missing'>{html.escape(w)}</span>"
                      for w in ref[chunk.ref_start_idx:chunk.ref_end_idx]]
    return " ".join(parts)


class ListenTab(LazyView):
    def __init__(self, controller: Controller) -> None:
        super().__init__(controller.errors, "the transcripts")
        self.state = controller.state
        self.session = controller.session
        self.errors = controller.errors
        es = self.session.eval_set
        g = self.errors.guard
        self.utterance = widgets.Dropdown(
            options=[(f"{uid}: {text[:50]}", i) for i, (uid, text) in enumerate(zip(es.ids,
                                                                                   es.texts))],
            description="utterance", layout=widgets.Layout(width="600px"))
        self.utterance.add_class("wb-utterance")
        self.audio = widgets.Audio(format="wav", autoplay=False, loop=False)
        self.audio.add_class("wb-audio")
        self.audio_note = widgets.HTML()
        self.transcripts = widgets.HTML()
        self.transcripts.add_class("wb-transcripts")
        self._audio_paths: dict[str, str] | None = None
        self.utterance.observe(g("choosing an utterance", lambda _c: self.invalidate()),
                               names=["value"])
        self.state.observe(g("updating transcripts", lambda _c: self.invalidate()),
                           names=["wer", "plan"])
        self.widget = widgets.VBox([self.utterance, widgets.HBox([self.audio, self.audio_note]),
                                    self.transcripts])
        self.widget.add_class("wb-listen")
        self._shown_audio: int | None = None

    def _audio_path(self, uid: str) -> str | None:
        if self._audio_paths is None:
            from workbench.data import read_manifest  # looked up per call: tests monkeypatch it
            manifest = self.session.eval_set.manifest
            try:
                self._audio_paths = {u.id: str(u.audio_path) for u in read_manifest(manifest)}
            except Exception:
                self._audio_paths = {}
        return self._audio_paths.get(uid)

    def _load_audio(self, index: int) -> None:
        uid = self.session.eval_set.ids[index]
        path = self._audio_path(uid)
        if path is None:
            self.audio_note.value = "<span class='wb-muted'>(no audio file for this utterance)</span>"
            self.audio.value = b""
            return
        wave = load_audio(path)
        buf = io.BytesIO()
        soundfile.write(buf, wave.numpy(), 16_000, format="WAV", subtype="PCM_16")
        self.audio.value = buf.getvalue()
        self.audio_note.value = f"<span class='wb-muted'>{len(wave) / 16_000:.2f} s, 16 kHz</span>"

    def draw(self) -> None:
        i = self.utterance.value
        if i is None:
            return
        if self._shown_audio != i:
            self._load_audio(i)
            self._shown_audio = i
        es = self.session.eval_set
        ref = es.texts[i]
        base = self.session.baseline_full.hypotheses[i]
        est = self.state.wer
        if est is not None and est.kind == "full" and est.plan_key == plan_key(self.state.plan):
            comp = marked_words(ref, est.hypotheses[i])
        else:
            comp = "<i class='wb-muted'>waiting for the full evaluation of this plan…</i>"
        self.transcripts.value = (
            "<table class='wb-transcript-table'>"
            f"<tr><td><b>reference</b></td><td>{html.escape(ref)}</td></tr>"
            f"<tr><td><b>baseline</b></td><td>{marked_words(ref, base)}</td></tr>"
            f"<tr><td><b>compressed</b></td><td class='wb-compressed-text'>{comp}</td></tr>"
            "</table><span class='wb-muted'>yellow: substituted (hover for the reference word), "
            "orange: inserted, struck through: missing</span>")
