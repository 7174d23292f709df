"""Atomic file and folder writes: a reader never sees a half-written export.

Files are written to a temporary name in the same folder and moved into place with `os.replace`
(atomic on POSIX when source and target are on the same file system, which the same folder
guarantees). An export folder is built as a hidden sibling staging folder and renamed into place
at the end, so an interrupted `workbench apply` leaves either the old folder or the new one,
never a mix, and no partial `model.onnx` at the target path.
"""
from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from workbench.cli_checks import signals_held

#: Permissions of what we write (mkstemp / mkdtemp create owner-only 0600 / 0700 entries).
FILE_MODE = 0o644
DIR_MODE = 0o755


def _remove_tree(path: Path) -> None:
    """Remove `path` completely, even if a signal arrives meanwhile (it is raised afterwards)."""
    with signals_held():
        shutil.rmtree(path, ignore_errors=True)


def write_bytes_atomic(path: Path, data: bytes) -> Path:
    """Write `data` to `path` via a temporary file in the same folder + fsync + os.replace."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = tmp = None
    try:
        with signals_held():   # a signal inside mkstemp is raised only once `tmp` is known
            fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "wb") as f:
            fd = None   # the file object owns (and closes) it now
            os.fchmod(f.fileno(), FILE_MODE)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with signals_held():
            if fd is not None:
                os.close(fd)
            if tmp is not None:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)
        raise
    return path


def write_text_atomic(path: Path, text: str) -> Path:
    return write_bytes_atomic(path, text.encode("utf-8"))


@contextlib.contextmanager
def staged_dir(target: Path) -> Iterator[Path]:
    """Yield an empty staging folder next to `target`; on success it replaces `target`.

    On any exception (KeyboardInterrupt included) the staging folder is removed and `target`
    is left exactly as it was. An existing `target` is replaced only after the new folder is
    complete (the caller decides whether replacing is allowed: see `--force`).
    """
    from workbench.export.errors import ExportError

    target = Path(target)
    created = [p for p in (target.parent, *target.parent.parents) if not p.exists()]
    stage: Path | None = None
    old: Path | None = None
    try:
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            with signals_held():   # the folder exists only once `stage` names it
                stage = _make_stage(target)
        except OSError as err:
            raise ExportError(f"{target}: cannot create the output folder there "
                              f"({err.strerror}); choose a folder you can write to.") from None
        yield stage
        with signals_held():   # commit: the old folder is never left moved aside half-way
            if target.exists():
                # Move the old folder aside first (rename is atomic), then drop it.
                old = _make_stage(target, "old")
                os.rmdir(old)
                os.replace(target, old)
            try:
                os.replace(stage, target)
                stage = None
            except OSError as err:
                if old is not None:   # put the previous folder back: the target is never lost
                    os.replace(old, target)
                    old = None
                raise ExportError(f"{target}: could not move the finished folder into place "
                                  f"({err.strerror or err}); nothing was written there.") from None
    except BaseException:
        with signals_held():   # a second Ctrl-C must not stop the cleanup half-way
            if stage is not None:
                shutil.rmtree(stage, ignore_errors=True)
            _remove_empty(created)
        raise
    finally:
        if old is not None:
            _remove_tree(old)


def _make_stage(target: Path, kind: str = "staging") -> Path:
    """Create `.{name}.{kind}.{random}` next to `target` (0755) and return it."""
    while True:
        path = target.parent / f".{target.name}.{kind}.{secrets.token_hex(6)}"
        try:
            path.mkdir(mode=DIR_MODE)
        except FileExistsError:
            continue
        os.chmod(path, DIR_MODE)   # mkdir's mode is masked by the umask
        return path


def _remove_empty(folders: list[Path]) -> None:
    """Remove the folders we created for an output that never arrived (deepest first)."""
    for folder in folders:
        with contextlib.suppress(OSError):
            folder.rmdir()
