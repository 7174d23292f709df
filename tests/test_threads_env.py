"""`import workbench` checks OMP_WAIT_POLICY instead of setting it (review 7, finding 32): the
variable only works from the process environment (the Makefile exports it); set from the package
it was a side effect that did nothing once torch was imported first."""
from __future__ import annotations

import os
import subprocess
import sys

CODE = ("import warnings; warnings.simplefilter('always'); import torch, workbench, os; "
        "print(os.environ.get('OMP_WAIT_POLICY'))")


def _run(**env: str) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    return subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True,
                          env={**base, "OMP_NUM_THREADS": "2", **env}, timeout=600)


def test_unset_policy_is_left_unset_and_warned_about_once() -> None:
    run = _run()
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "None"                   # the environment is not changed
    assert run.stderr.count("OMP_WAIT_POLICY is not set") == 1


def test_a_set_policy_gives_no_warning() -> None:
    run = _run(OMP_WAIT_POLICY="PASSIVE")
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "PASSIVE" and "OMP_WAIT_POLICY" not in run.stderr
