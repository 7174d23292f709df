"""Checked at `import workbench`, not set: OpenMP worker threads should sleep instead of spinning
when they wait (OMP_WAIT_POLICY=PASSIVE).

By default libgomp's threads spin-wait between parallel regions. On a shared 2-core machine
(CI, a laptop running a notebook next to a test suite) a spinning thread steals the core its
partner needs, and a parallel region waits for a descheduled thread: a 2-thread torch loop of
small GEMMs (64x384 @ 384x384 + GELU, 3,000 times) took 24-31 s instead of 1.3 s at load ~5
(measured here 2026-12-02; the same loop with one thread: 2.1 s). PASSIVE costs nothing
measurable on a quiet machine (1.2 s vs 2.1 s default at load 4).

libgomp reads the variable once, when it starts, so it belongs in the environment of the
process: the Makefile exports it to every recipe (tests and their notebook kernels, `make lab`,
`make serve`, benches; .ci/run goes through make). Setting it from here was a process-wide side
effect of importing a library that did nothing whenever torch had been imported first, as in
most scripts and several lessons. So the package only warns, once, when it is unset and torch
runs on more than one thread.
"""
import os
import warnings

import torch

ADVICE = ("OMP_WAIT_POLICY is not set: torch's OpenMP threads spin while they wait, which made "
          "2-thread runs up to 20x slower on a busy 2-core machine (workbench/_threads.py). "
          "Start Python with OMP_WAIT_POLICY=PASSIVE in its environment (make does), or use "
          "torch.set_num_threads(1).")


def wait_policy_ok() -> bool:
    """False (after one RuntimeWarning) when OMP_WAIT_POLICY is unset and torch uses more than
    one thread; True otherwise."""
    if "OMP_WAIT_POLICY" in os.environ:
        return True
    if torch.get_num_threads() <= 1:
        return True
    warnings.warn(ADVICE, RuntimeWarning, stacklevel=3)
    return False


wait_policy_ok()
