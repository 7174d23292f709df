"""Set before torch loads: OpenMP worker threads sleep instead of spinning when they wait.

By default libgomp's threads spin-wait between parallel regions. On a shared 2-core machine
(CI, a laptop running a notebook next to a test suite) a spinning thread steals the core its
partner needs, and a parallel region waits for a descheduled thread: a 2-thread torch loop of
small GEMMs (64x384 @ 384x384 + GELU, 3,000 times) took 24-31 s instead of 1.3 s at load ~5
(measured here 2026-12-02; the same loop with one thread: 2.1 s). PASSIVE costs nothing
measurable on a quiet machine (1.2 s vs 2.1 s default at load 4). A value the user set wins.
Imported first by `workbench/__init__.py`; it cannot help if torch was imported before workbench.
"""
import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
