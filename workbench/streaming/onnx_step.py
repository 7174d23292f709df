"""The streaming ONNX model: one chunk + cached context in, the chunk's logits + new cache out.

    path = export_step(model, cfg, "step.onnx")
    logits, step_ms = run_onnx_stream(path, cfg, features)   # chunk by chunk in onnxruntime,
                                                             # each step's wall ms (toolbox clock)

Inputs / outputs are those of `StreamingStep` (batch 1, fixed chunk shape); the caller keeps the
rolling mel window and feeds back the caches. onnxruntime is imported inside the functions.
"""
from __future__ import annotations

import contextlib
import copy
import io
import logging
import warnings
from pathlib import Path

import numpy as np
import torch

from workbench.onnx_tools.runtime import make_session, timed_run
from workbench.streaming.step import (HEAD_DELAY, StreamConfig, StreamingError, StreamingStep,
                                      mel_window, n_steps)

INPUTS = ("mel", "offset", "mel_len", "k_cache", "v_cache", "head_cache")
OUTPUTS = ("logits", "k_cache_out", "v_cache_out", "head_cache_out")
OPSET = 17


def example_inputs(step: StreamingStep) -> tuple[torch.Tensor, ...]:
    n_mels = step.model.config.n_mels
    k, v, hc = step.init_state(1)
    return (torch.randn(1, n_mels, step.cfg.mel_window), torch.tensor(0, dtype=torch.int64),
            torch.tensor([400], dtype=torch.int64), k, v, hc)


def export_step(model: torch.nn.Module, cfg: StreamConfig, path: Path | str) -> Path:
    """fp32 ONNX of one chunk step (batch 1). The caller's model is not modified (deep copy)."""
    if cfg.left < 1:
        raise StreamingError(f"left={cfg.left}: the ONNX step needs a left context of >= 1 frame")
    path = Path(path)
    step = StreamingStep(copy.deepcopy(model).eval(), cfg).eval()
    args = example_inputs(step)
    level = logging.getLogger("torch.onnx").level
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            logging.getLogger("torch.onnx").setLevel(logging.ERROR)
            # The TorchScript exporter: the step has fixed shapes (no symbolic time axis to
            # trace), and it exports the demo's step ~6x faster than dynamo=True here.
            torch.onnx.export(step, args, str(path), dynamo=False, opset_version=OPSET,
                              input_names=list(INPUTS), output_names=list(OUTPUTS))
    except Exception as err:  # the exporter raises many types; report the first line plainly
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise StreamingError(f"streaming step export failed: {first}") from err
    finally:
        logging.getLogger("torch.onnx").setLevel(level)
    return path


def ort_session(path: Path | str, threads: int = 1):
    """CPU InferenceSession, all graph optimisations, `threads` intra-op threads (1 = what the
    host latency profile models): the toolbox's `make_session`, as the export uses."""
    return make_session(Path(path), threads)


def run_onnx_stream(session_or_path, cfg: StreamConfig, features: torch.Tensor,
                    state_shapes: tuple[tuple[int, ...], tuple[int, ...]] | None = None
                    ) -> tuple[torch.Tensor, list[float]]:
    """Run one utterance (80, T) chunk by chunk: (T', V) logits and per-step ms.

    Each step is timed on the ONNX toolbox's one clock (`onnx_tools.runtime.timed_run`: wall
    time of `session.run`, the clock the export report and the host latency calibration use),
    so measured and predicted step times compare like for like. A busy machine inflates wall
    times: read them with the load average.
    """
    sess = ort_session(session_or_path) if isinstance(session_or_path, (str, Path)) \
        else session_or_path
    shapes = {i.name: i.shape for i in sess.get_inputs()}
    k = np.zeros(shapes["k_cache"], dtype=np.float32)
    v = np.zeros(shapes["v_cache"], dtype=np.float32)
    hc = np.zeros(shapes["head_cache"], dtype=np.float32)
    feats = features[None].float()
    t_len = (features.shape[-1] - 1) // 2 + 1
    mel_len = np.array([features.shape[-1]], dtype=np.int64)
    outs, times = [], []
    for j in range(n_steps(t_len, cfg.chunk)):
        s = j * cfg.chunk
        feed = {"mel": mel_window(feats, s, cfg).numpy(), "offset": np.array(s, dtype=np.int64),
                "mel_len": mel_len, "k_cache": k, "v_cache": v, "head_cache": hc}
        (logits, k, v, hc), ms = timed_run(sess, feed)
        times.append(ms)
        outs.append(logits)
    out = np.concatenate(outs, axis=1)[0, HEAD_DELAY: HEAD_DELAY + t_len]
    return torch.from_numpy(out), times
