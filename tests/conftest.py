"""Suite-wide fixtures."""
import threading

import pytest


@pytest.fixture(autouse=True, scope="session")
def _join_background_workers():
    """Wait for the workbench's background model runs before the interpreter exits: a torch run
    still in flight at shutdown can abort the process ("terminate called ...")."""
    yield
    for thread in threading.enumerate():
        if thread is not threading.current_thread() and thread.name.startswith("workbench-"):
            thread.join(timeout=120)
