"""Suite-wide fixtures."""
import threading

import pytest
import torch


@pytest.fixture(scope="module")
def tiny_conformer():
    """A randomly initialised Conformer-CTC 'tiny' (seed 0), one per test module."""
    from workbench.models import conformer_ctc
    torch.manual_seed(0)
    return conformer_ctc("tiny").eval()


@pytest.fixture(scope="module")
def whisper_small():
    """A randomly initialised Whisper-CTC of a small size (same module paths as tiny.en)."""
    from workbench.models import build_model
    torch.manual_seed(0)
    return build_model("whisper_ctc", d_model=64, n_heads=2, n_layers=2, d_ff=128, n_ctx=100,
                       head_dim=32).eval()


@pytest.fixture(scope="module")
def random_tiny_en():
    """A randomly initialised Whisper-CTC at the demo's full size (tiny.en shapes), seed 0: for
    latency tables, where the shapes matter and the weights do not."""
    from workbench.models.whisper_ctc import WhisperCTC
    torch.manual_seed(0)
    return WhisperCTC().eval()


@pytest.fixture(autouse=True, scope="session")
def _join_background_workers():
    """Wait for the workbench's background model runs before the interpreter exits: a torch run
    still in flight at shutdown can abort the process ("terminate called ...")."""
    yield
    for thread in threading.enumerate():
        if thread is not threading.current_thread() and thread.name.startswith("workbench-"):
            thread.join(timeout=120)
