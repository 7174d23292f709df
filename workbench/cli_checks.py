"""Checks of command-line arguments, output folders and signals, shared by every `workbench` verb.

Every refusal is one line on stderr naming the option (or file), what is wrong and the fix, with
exit status 2; nothing is computed or written before the inputs are checked. argparse's own
errors are reduced to that one line too (no usage block).

Signals: SIGTERM is turned into an exception (`Terminated`, a KeyboardInterrupt) so the same
cleanup that runs on Ctrl-C runs on `kill`: staging folders are removed, a partial export never
appears at the target path, and one line says what happened (exit 130 for SIGINT, 143 for SIGTERM).
"""
from __future__ import annotations

import argparse
import contextlib
import difflib
import errno
import math
import os
import re
import shutil
import signal
import socket
import sys
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from workbench.errors import ArgumentError, WorkbenchError

MAX_THREADS = 256
MAX_SEED = 2**32 - 1          # numpy's and torch's common range
MAX_MINUTES = 7 * 24 * 60     # a week
MAX_STEPS = 10_000_000
MAX_COUNT = 10_000_000


# ---- argparse types: each refuses with the option's fix --------------------------------------

def _int(text: str, what: str) -> int:
    try:
        value = int(str(text).strip(), 10)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number; give {what}") from None
    return value


def int_in(lo: int, hi: int, what: str) -> Callable[[str], int]:
    """An argparse type: a whole number in [lo, hi]; `what` says what to give instead."""
    def parse(text: str) -> int:
        value = _int(text, what)
        if not lo <= value <= hi:
            raise argparse.ArgumentTypeError(f"{value} is out of range {lo}..{hi}; give {what}")
        return value
    parse.__name__ = "whole number"
    return parse


def float_in(lo: float, hi: float, what: str, lo_open: bool = True) -> Callable[[str], float]:
    """An argparse type: a finite number in (lo, hi] (or [lo, hi] with lo_open=False)."""
    def parse(text: str) -> float:
        try:
            value = float(str(text).strip())
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number; give {what}") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"{text} is not a finite number; give {what}")
        if value > hi or value < lo or (lo_open and value == lo):
            bound = f"> {lo:g}" if lo_open else f">= {lo:g}"
            raise argparse.ArgumentTypeError(f"{value:g} must be {bound} and <= {hi:g}; "
                                             f"give {what}")
        return value
    parse.__name__ = "number"
    return parse


def choice_of_ints(allowed: tuple[int, ...], what: str) -> Callable[[str], int]:
    """An argparse type: a whole number from `allowed`."""
    def parse(text: str) -> int:
        value = _int(text, what)
        if value not in allowed:
            raise argparse.ArgumentTypeError(f"{value} is not allowed; give {what}")
        return value
    parse.__name__ = "whole number"
    return parse


def block_set(text: str) -> tuple[int, ...] | None:
    """An argparse type: a set of transformer block indices, "1,2" -> (1, 2), or "all" -> None
    (every block). Whether the indices exist is checked against the model before any work."""
    fix = 'give block indices separated by commas, e.g. 1 or 1,2, or "all"'
    if text.strip().lower() == "all":
        return None
    parts = [p.strip() for p in text.split(",")]
    if not text.strip() or any(not p for p in parts):
        raise argparse.ArgumentTypeError(f"{text!r} has an empty block index; {fix}")
    try:
        values = [int(p) for p in parts]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: not whole numbers; {fix}") from None
    if any(v < 0 for v in values):
        raise argparse.ArgumentTypeError(f"{text!r}: a block index is negative; {fix}")
    if len(set(values)) != len(values):
        raise argparse.ArgumentTypeError(f"{text!r} repeats a block index; {fix}")
    return tuple(sorted(values))


threads = int_in(1, MAX_THREADS, "the number of CPU threads to use, e.g. 2")
seed = int_in(0, MAX_SEED, f"a seed in 0..{MAX_SEED}, e.g. 0")
port = int_in(1, 65535, "a free TCP port in 1..65535, e.g. 8888")
minutes = float_in(0.0, MAX_MINUTES, f"a wall-clock budget in minutes, > 0 and <= {MAX_MINUTES}")
steps = int_in(1, MAX_STEPS, "a number of optimizer steps >= 1, e.g. 360")
limit = int_in(1, MAX_COUNT, "a number of utterances >= 1 (leave it out for all)")
count = int_in(1, MAX_COUNT, "a count >= 1")


def existing_file(option: str, kind: str = "") -> Callable[[str], str]:
    """An argparse type: a path to an existing, readable regular file (`kind`: "plan", ...)."""
    kind = kind or option.lstrip("-")
    def parse(text: str) -> str:
        path = Path(text).expanduser()
        if not str(text).strip():
            raise argparse.ArgumentTypeError("empty path; give a file")
        if path.is_dir():
            raise argparse.ArgumentTypeError(f"{text} is a folder, not a file; give the file "
                                             f"inside it")
        if not path.exists():
            raise argparse.ArgumentTypeError(f"{text}: no such {kind} file; check the path")
        if not path.is_file():
            raise argparse.ArgumentTypeError(f"{text} is not a regular file; give a file")
        if not os.access(path, os.R_OK):
            raise argparse.ArgumentTypeError(f"{text}: not readable (permission denied); fix "
                                             f"its permissions or copy it")
        return str(path)
    parse.__name__ = "file"
    return parse


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line: `workbench VERB: error: argument --x: ...`."""

    def error(self, message: str) -> None:  # type: ignore[override]
        bad = re.search(r"invalid choice: '(.*?)' \(choose from (.*)\)", message)
        if bad:   # add the closest known name
            message += ";" + closest(bad.group(1), re.findall(r"'([^']*)'", bad.group(2)))
        _fresh_line()
        print(f"{self.prog}: error: {message} (see `{self.prog} --help`)", file=sys.stderr)
        sys.exit(2)


def check_port_free(port: int, host: str = "127.0.0.1") -> int:
    """Refuse a port something already listens on (the server would fail after starting)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError as err:
            raise ArgumentError(f"--port {port}: cannot listen on {host}:{port} "
                                f"({err.strerror or err}); pass another --port, e.g. "
                                f"{port + 1 if port < 65535 else 8888}.") from None
    return port


# ---- names ------------------------------------------------------------------------------------

def closest(name: object, known: Iterable[str]) -> str:
    """' did you mean "x"?' for the closest known name, or '' when nothing is close."""
    hit = difflib.get_close_matches(str(name), list(known), n=1, cutoff=0.5)
    return f" did you mean '{hit[0]}'?" if hit else ""


def check_choice(option: str, value: str, known: Iterable[str]) -> str:
    known = sorted(known)
    if value not in known:
        raise ArgumentError(f"{option} {value}: unknown;{closest(value, known)} known: "
                            f"{', '.join(known)}.")
    return value


# ---- output folders ---------------------------------------------------------------------------

def check_writable_parent(out: Path, option: str = "--out") -> None:
    """Refuse `out` early when its folder cannot be created or written: before any work is done.

    The nearest existing ancestor must be a folder where we can create (and remove) a hidden
    probe folder; that is what the staging folder of an atomic write needs. Root ignores
    permission bits, so the probe is a real mkdir (it also catches read-only file systems).
    """
    out = Path(out).expanduser()
    parent = out.absolute().parent
    ancestor = parent
    while not ancestor.exists():
        if ancestor.is_symlink():   # a dangling link in the way
            raise ArgumentError(f"{option} {out}: {ancestor} is a broken symbolic link; fix it "
                                f"or choose another folder.")
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise ArgumentError(f"{option} {out}: {ancestor} is a file, not a folder; choose another "
                            f"path.")
    try:
        probe = tempfile.mkdtemp(prefix=f".{out.name or 'out'}.probe.", dir=ancestor)
    except OSError as err:
        reason = os.strerror(err.errno) if err.errno else str(err)
        hint = ("the file system is read-only" if err.errno == errno.EROFS else reason.lower())
        raise ArgumentError(f"{option} {out}: cannot write in {ancestor} ({hint}); choose a "
                            f"folder you can write to.") from None
    os.rmdir(probe)


def check_new_output_dir(out: Path, force: bool, option: str = "--out") -> None:
    """`out` must be a folder we may fill: absent, empty, or replaced with --force; writable."""
    out = Path(out).expanduser()
    if out.exists() and not out.is_dir():
        raise ArgumentError(f"{option} {out}: is a file, not a folder; choose another path.")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise ArgumentError(f"{option} {out}: folder exists and is not empty; pass --force to "
                            f"replace it, or choose another folder.")
    check_writable_parent(out / "x" if out.is_dir() else out, option)


def remove_stale(paths: Iterable[Path]) -> None:
    for p in paths:
        shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)


# ---- signals and the one error line -----------------------------------------------------------

class Terminated(KeyboardInterrupt):
    """Raised in the main thread when SIGTERM arrives, so cleanup handlers run as for Ctrl-C."""

    signum = signal.SIGTERM


def _on_sigterm(signum: int, frame: object) -> None:
    raise Terminated()


def install_signal_handlers() -> None:
    """SIGTERM -> Terminated (cleanup runs). Only from the main thread (signal's rule)."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _on_sigterm)


#: Signals held back by `signals_held`.
_HELD_SIGNALS = tuple(s for s in (getattr(signal, "SIGINT", None), getattr(signal, "SIGTERM", None))
                      if s is not None)


@contextlib.contextmanager
def signals_held() -> Iterator[None]:
    """Run the body without being interrupted by SIGINT / SIGTERM; one that arrives meanwhile is
    raised (delivered again to its own handler) right after the body.

    Why not `signal.pthread_sigmask`: it blocks the signal for the calling thread only, and the
    kernel then delivers a process-directed signal to another thread (onnxruntime's and torch's
    pools) whose C handler still trips Python's flag, so the Python handler runs in the main
    thread anyway (checked here: KeyboardInterrupt arrives with SIGINT blocked in the main
    thread). Python-level handlers always run in the main thread, so swapping them for a
    recorder is what actually holds the signal. `signal.signal` runs pending handlers *before*
    it swaps, so a signal that arrived just before is raised here, with nothing changed.
    Outside the main thread (signal's rule) the body runs as is.

    Used around staging-folder moves (workbench.export.atomic) and around the import of onnx
    (a native nanobind module: a KeyboardInterrupt raised while it initialises cannot cross its
    C++ code, and the process aborts with SIGABRT instead of cleaning up).
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    previous: dict[int, object] = {}
    try:
        for signum in _HELD_SIGNALS:
            handler = signal.getsignal(signum)
            if handler is None:   # installed outside Python: cannot be restored, leave it
                continue
            signal.signal(signum, lambda s, frame: caught.append(s))
            previous[signum] = handler
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)   # pending ones still go to the recorder first
        for signum in dict.fromkeys(caught):
            signal.raise_signal(signum)   # to the restored handler: KeyboardInterrupt / Terminated


def _fresh_line() -> None:
    """Start a new line if a progress bar may have left the cursor mid-line on stderr."""
    try:
        from tqdm import tqdm
        live = list(getattr(tqdm, "_instances", ()))
    except ImportError:   # pragma: no cover - tqdm is a dependency
        live = []
    if live:
        sys.stderr.write("\n")
    sys.stderr.flush()


def report_error(command: str, err: BaseException) -> int:
    """Print the one line for `err` (a WorkbenchError or an interrupt); return the exit status."""
    _fresh_line()
    if isinstance(err, Terminated):
        print(f"workbench {command}: terminated (SIGTERM); partial output was removed.",
              file=sys.stderr)
        return 128 + signal.SIGTERM
    if isinstance(err, KeyboardInterrupt):
        print(f"workbench {command}: interrupted (Ctrl-C); partial output was removed.",
              file=sys.stderr)
        return 128 + signal.SIGINT
    text = " ".join(str(err).split()) if isinstance(err, WorkbenchError) else str(err)
    print(f"workbench {command}: error: {text}", file=sys.stderr)
    return 2
