"""Stable CSS class names, so browser tests (and users' own styles) can find every control.

    control_class("bits", "blocks.0.mlp.fc1")  -> "wb-bits-blocks-0-mlp-fc1"
    control_class("prune", "blocks.0.mlp")     -> "wb-prune-blocks-0-mlp"

Fixed names of the header readouts: wb-wer, wb-cer, wb-size, wb-latency, wb-memory, wb-device,
wb-audio-seconds; the error area is wb-error. Each readout carries its exact numbers in data-*
attributes of an inner <span> (e.g. data-bytes, data-wer), so a test reads numbers, not prose.
"""
from __future__ import annotations

import re

_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")

#: Styles of the app, injected once as an HTML widget (plain CSS: JupyterLab and Voila both
#: render it; theme variables fall back to light-theme colours).
STYLE = """
<style>
.wb-app { font-size: 13px; }
.wb-header { border-bottom: 1px solid var(--jp-border-color1, #ccc); padding: 4px 0 6px 0; }
.wb-card { padding: 2px 10px; margin-right: 6px; border-left: 3px solid #4c78a8; min-width: 150px; }
.wb-card b { font-size: 15px; }
.wb-muted { color: var(--jp-ui-font-color2, #777); font-size: 11px; }
.wb-badge { display: inline-block; padding: 1px 6px; border-radius: 8px; font-weight: 600; }
.wb-fit-yes { background: #d4edda; color: #155724; }
.wb-fit-no { background: #f8d7da; color: #721c24; }
.wb-pending { opacity: 0.55; }
.wb-error { color: #721c24; }
.wb-error pre { white-space: pre-wrap; font-size: 11px; }
.wb-error-box { background: #f8d7da; border: 1px solid #f1aeb5; padding: 4px 8px; margin: 2px 0; }
.wb-block-title { font-weight: 600; margin-top: 6px; }
.wb-layer-rows > * { flex-shrink: 0 !important; }   /* rows keep their height when scrolling */
.wb-row-label { font-family: var(--jp-code-font-family, monospace); font-size: 12px; }
.wb-err-sub { background: #fde2e1; text-decoration: line-through; }
.wb-err-ins { background: #ffd8a8; }
.wb-err-del { background: #fde2e1; text-decoration: line-through; }
.wb-hyp-sub { background: #fff3cd; }
</style>
"""


def css_name(path: str) -> str:
    """A module path as a CSS-safe token: dots (and anything unsafe) become dashes."""
    return _UNSAFE.sub("-", path)


def control_class(kind: str, path: str) -> str:
    """The class of control `kind` ("bits", "prune", "structure", "rank") of layer `path`."""
    return f"wb-{kind}-{css_name(path)}"
