"""A cohort folder: many shards (array tasks) writing one output folder at once.

- ``cohort.json`` names the model (path and sha256), its classes, the input list and the shard
  count. The first shard writes it; a shard of another model, list or shard count is refused, and
  so is a folder that holds a plain run's outputs (summary.json, model.pt, ...).
- Each shard appends a record per input to ``shards/NAME.results.jsonl`` once all of that input's
  files are written (each atomically), and a record per failed input to ``NAME.failures.jsonl``.
  An input is complete when a results file holds its record and every file the record names is
  there; a line torn by a kill is no record.
- ``shards/.NAME.lock`` is held while a shard runs: the same shard twice at once is refused; the
  operating system drops the lock however the process ends.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ... import __version__
from ..errors import InputError
from ..files.outfolder import earlier_outputs, try_lock
from ..files.volumes import atomic_path
from ..protocol import COHORT_FILE, FAILURES_SUFFIX, RESULTS_SUFFIX, SHARDS_FOLDER
from .shard import Shard


def file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def cohort_description(model: str, classes: list[dict[str, Any]], inputs: str | None, images: list[str],
                       shards: int) -> dict[str, Any]:
    return {"version": __version__, "model": os.path.abspath(model), "model_sha256": file_sha256(model),
            "classes": classes, "inputs": None if inputs is None else os.path.abspath(inputs),
            "images": [os.path.abspath(i) for i in images], "shards": shards}


def read_cohort(out: Path) -> dict[str, Any] | None:
    path = out / COHORT_FILE
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError):
        raise InputError(str(path), "is not a cohort description (not JSON); was it edited?") from None


def check_cohort_folder(out: Path, wanted: dict[str, Any]) -> None:
    """Refuse a folder of another model, input list or shard count, or of a plain run."""
    found = read_cohort(out)
    if found is None:
        plain = earlier_outputs(out)
        if plain:
            raise InputError(str(out), f"holds the outputs of a plain run ({', '.join(plain[:4])}), not a cohort's; "
                                       "choose another --out folder")
        return
    if found.get("model_sha256") != wanted["model_sha256"]:
        raise InputError(str(out), f"holds a cohort of another model ({found.get('model')}, sha256 "
                                   f"{str(found.get('model_sha256'))[:12]}...); choose another --out folder")
    for key, what in (("inputs", "input list"), ("images", "image arguments"), ("shards", "shard count")):
        if found.get(key) != wanted[key]:
            raise InputError(str(out), f"holds a cohort of another {what} ({found.get(key)}, not {wanted[key]}); "
                                       "choose another --out folder, or run with the same one")


def claim_cohort_folder(out: Path, wanted: dict[str, Any]) -> None:
    """Check the folder and write ``cohort.json`` if it is not there (the same content from any shard)."""
    check_cohort_folder(out, wanted)
    out.mkdir(parents=True, exist_ok=True)
    (out / SHARDS_FOLDER).mkdir(exist_ok=True)
    if not (out / COHORT_FILE).is_file():
        with atomic_path(out / COHORT_FILE) as tmp, open(tmp, "w", encoding="utf-8") as f:
            json.dump(wanted, f, indent=2)
            f.write("\n")


# --- records ------------------------------------------------------------------------------------


def results_path(out: Path, shard: Shard) -> Path:
    return out / SHARDS_FOLDER / f"{shard.name}{RESULTS_SUFFIX}"


def failures_path(out: Path, shard: Shard) -> Path:
    return out / SHARDS_FOLDER / f"{shard.name}{FAILURES_SUFFIX}"


def append_record(path: Path, record: dict[str, Any]) -> None:
    """One JSON line, on disk before returning (a kill after it keeps the record; a kill during it
    leaves a torn last line that readers skip and the next append starts after)."""
    line = json.dumps(record, separators=(",", ":")) + "\n"
    with open(path, "ab") as f:
        if f.tell() and not _ends_with_newline(path):
            line = "\n" + line
        f.write(line.encode("utf-8"))
        f.flush()
        os.fsync(f.fileno())


def _ends_with_newline(path: Path) -> bool:
    with open(path, "rb") as f:
        f.seek(-1, os.SEEK_END)
        return f.read(1) == b"\n"


def read_records(path: Path) -> Iterator[dict[str, Any]]:
    """The whole records of one results or failures file (a torn line is skipped)."""
    if not path.is_file():
        return
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            with contextlib.suppress(ValueError):
                record = json.loads(line)
                if isinstance(record, dict) and "name" in record:
                    yield record


def all_records(out: Path, suffix: str) -> Iterator[dict[str, Any]]:
    """Every record of every shard's results (or failures) file, shard by shard."""
    folder = out / SHARDS_FOLDER
    if folder.is_dir():
        for path in sorted(folder.glob(f"shard-*{suffix}")):
            yield from read_records(path)


def is_complete(out: Path, record: dict[str, Any]) -> bool:
    return all((out / name).is_file() for name in record.get("files", []))


def completed_names(out: Path, wanted: set[str]) -> set[str]:
    """Names among ``wanted`` whose record is in a results file and whose files are all there."""
    return {r["name"] for r in all_records(out, RESULTS_SUFFIX) if r["name"] in wanted and is_complete(out, r)}


# --- one shard at a time --------------------------------------------------------------------------


def lock_path(out: Path, shard: Shard) -> Path:
    return out / SHARDS_FOLDER / f".{shard.name}.lock"


@contextlib.contextmanager
def hold_shard(out: Path, shard: Shard) -> Iterator[None]:
    """Hold the shard's lock for the run; refused while another process runs the same shard."""
    with open(lock_path(out, shard), "a+") as handle:
        if not try_lock(handle):
            raise InputError(str(out), f"shard {shard} is being run by another process; wait for it to finish")
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        yield


def shard_is_running(out: Path, shard: Shard) -> bool:
    """Whether a process holds the shard's lock now (the lock file stays behind; its lock does not)."""
    path = lock_path(out, shard)
    if not path.is_file():
        return False
    with open(path, "a+") as handle:
        return not try_lock(handle)  # the lock, if taken here, goes with the handle
