"""The output folder of a run: what may be written there, and one run at a time.

A run holds its folder with a lock on ``OUT/.plcl.lock`` (``flock`` on POSIX, ``msvcrt.locking`` on
Windows). The operating system drops the lock when the process ends, however it ends, so a crashed
or killed run never leaves the folder stuck; a second run into a held folder is refused. The
folder's files and sub-folders are named in protocol.py (RUN_FILES, RUN_FOLDERS, LOCK_FILE).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

from ..errors import InputError
from ..protocol import COHORT_FILE, LOCK_FILE, RUN_FILES, RUN_FOLDERS, STOP_FILE
from .volumes import check_writable_folder


def check_inputs_outside_outputs(out: Path, inputs: Sequence[str]) -> None:
    """Outputs are only ever written to OUT's own files and folders: refuse an --out where that
    would replace an input (an annotation, an image, the model a training starts from)."""
    try:
        out.resolve()
    except (RuntimeError, OSError) as error:  # Python < 3.13 raises RuntimeError for a symbolic link loop
        raise InputError(str(out), f"cannot be used as the output folder: its path cannot be followed ({error}; a "
                                   "symbolic link that points to itself?)") from None
    own = {(out / n).resolve() for n in RUN_FILES}
    folders = {(out / n).resolve() for n in RUN_FOLDERS}
    for path in inputs:
        resolved = Path(path).resolve()
        if resolved in own or resolved.parent in folders:
            raise InputError(path, f"lies where outputs of {out} are written; choose another --out folder")


def earlier_outputs(out: Path) -> list[str]:
    """Outputs of an earlier run in ``out`` (names relative to it)."""
    found = [n for n in RUN_FILES if (out / n).exists()]
    found += [f"{n}/" for n in RUN_FOLDERS
              if (out / n).is_dir() and any(not p.name.startswith(".") for p in (out / n).iterdir())]
    return found


def check_fresh_output_folder(out: Path) -> None:
    """A new run starts in a folder without an earlier run's outputs: mixing them would leave stale
    predictions beside a summary that does not list them, or replace an earlier model."""
    if (out / COHORT_FILE).exists():
        raise InputError(str(out), f"is a cohort folder ({COHORT_FILE}) of plcl predict --inputs or plcl cohort; "
                                   "choose a new --out folder")
    found = earlier_outputs(out)
    if found:
        raise InputError(str(out), f"holds the outputs of an earlier run ({', '.join(found[:4])}); choose a new "
                                   "--out folder (or --resume it to continue a cancelled training)")


def check_output_folder(out: Path, inputs: Sequence[str], resume: bool = False) -> None:
    """Every check of ``out`` that can be made before anything is written."""
    check_inputs_outside_outputs(out, inputs)
    check_writable_folder(out)
    if not resume:
        check_fresh_output_folder(out)


def remove_partial_files(out: Path) -> None:
    """Temporary files of atomic writes (``.NAME.XXXX.partial.EXT``) left by a killed run; only
    called while holding the folder, so no running writer owns them."""
    for folder in [out] + [out / n for n in RUN_FOLDERS]:
        if folder.is_dir():
            for path in folder.glob(".*.partial*"):
                with contextlib.suppress(OSError):
                    path.unlink()


@contextlib.contextmanager
def hold_output_folder(out: Path, inputs: Sequence[str] = (), resume: bool = False) -> Iterator[None]:
    """Check ``out``, create it and hold it for this run; refused while another run holds it.

    The checks are made again once the folder is held (another run may have finished into it in
    between); if they fail then, the folder is left as it was found.
    """
    check_output_folder(out, inputs, resume)
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    handle = _acquire(out)
    if handle is None:
        if created:
            with contextlib.suppress(OSError):
                out.rmdir()
        raise InputError(str(out), f"is in use by another plcl run{_holder(out)}; wait for it to finish or "
                                   "choose another --out folder")
    try:
        try:
            check_output_folder(out, inputs, resume)
        except InputError:
            _release(out, handle, remove=True)
            if created:
                with contextlib.suppress(OSError):
                    out.rmdir()
            raise
        remove_partial_files(out)
        with contextlib.suppress(OSError):  # a stop request left by an earlier run is not this run's
            (out / STOP_FILE).unlink()
        yield
    finally:
        if not handle.closed:
            _release(out, handle, remove=True)
        if created:  # a run that failed before writing anything leaves no empty folder behind
            with contextlib.suppress(OSError):
                out.rmdir()


def _holder(out: Path) -> str:
    with contextlib.suppress(OSError, ValueError):
        pid = int((out / LOCK_FILE).read_text().strip() or "0")
        if pid:
            return f" (process {pid})"
    return ""


def _acquire(out: Path):  # -> an open file, or None when another process holds the folder
    path = out / LOCK_FILE
    while True:
        handle = open(path, "a+")  # noqa: SIM115 - held open for the whole run: the lock lives with it
        if not try_lock(handle):
            handle.close()
            return None
        # The holder before us may have removed the file between our open and our lock: then we
        # hold a file nobody else sees; start again on the file now at the path.
        try:
            same = os.path.samestat(os.fstat(handle.fileno()), os.stat(path))
        except FileNotFoundError:
            same = False
        if same:
            handle.seek(0)
            handle.truncate()
            handle.write(f"{os.getpid()}\n")
            handle.flush()
            return handle
        handle.close()


def _release(out: Path, handle, remove: bool) -> None:
    if remove:
        with contextlib.suppress(OSError):
            os.unlink(out / LOCK_FILE)  # while still locked, so no other run is holding this file
    handle.close()  # closing drops the lock


if os.name == "nt":  # pragma: no cover - Windows
    import msvcrt

    def try_lock(handle) -> bool:
        """Take an exclusive lock on an open file without waiting; False if another process holds it."""
        try:
            handle.seek(0)
            msvcrt.locking(handle.fileno(), msvcrt.LK_NBLCK, 1)
            return True
        except OSError:
            return False
else:
    import fcntl

    def try_lock(handle) -> bool:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except OSError:
            return False
