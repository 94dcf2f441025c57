"""The inputs of a cohort: ``plcl predict --inputs LIST`` (and ``plcl cohort slurm --inputs LIST``).

LIST is one of
- a folder: the image files in it (not in sub-folders), sorted by name;
- a ``.csv`` file with a header row holding a ``path`` column (other columns are ignored);
- a text file: one path a line; blank lines and lines starting with ``#`` are skipped.
Relative paths in a file are relative to the file's own folder, so a list moves with its images.

Entries are streamed (10^5 lines read in well under a second); nothing here opens an image.
Problems are one line naming the list, and the line, where there is one.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from ..errors import InputError
from .volumes import volume_name

#: Files of a folder that are images (segmentations and hidden files are not).
IMAGE_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd")


@dataclass(frozen=True)
class Entry:
    """One input: its position among the inputs (0-based, what shards split by), its path as
    given (made absolute), and where it was given (``LIST:line``, or ``argument``)."""

    position: int
    path: str
    origin: str

    @property
    def name(self) -> str:
        return volume_name(self.path)


def read_inputs(images: list[str], list_path: str | None) -> Iterator[Entry]:
    """The command line's image paths, then the entries of ``list_path``, numbered in that order."""
    position = 0
    for image in images:
        yield Entry(position, os.path.abspath(image), "argument")
        position += 1
    if list_path is None:
        return
    for origin, path in _list_entries(list_path):
        yield Entry(position, path, origin)
        position += 1


def _list_entries(list_path: str) -> Iterator[tuple[str, str]]:
    path = Path(list_path)
    if path.is_dir():
        found = sorted(p.name for p in os.scandir(path) if p.is_file() and _is_image(p.name))
        for name in found:
            yield str(path), str(path.resolve() / name)
        return
    if not path.is_file():
        raise InputError(list_path, "does not exist (--inputs takes a text file of paths, a CSV file with a "
                                    "'path' column, or a folder of images)")
    base = str(path.resolve().parent)
    try:
        with open(path, newline="", encoding="utf-8") as f:
            if path.suffix.lower() == ".csv":
                yield from _csv_entries(list_path, f, base)
            else:
                for number, line in enumerate(f, 1):
                    text = line.strip()
                    if text and not text.startswith("#"):
                        yield f"{list_path}:{number}", joined(base, text)
    except UnicodeDecodeError:
        raise InputError(list_path, "is not a text file (--inputs takes a text file of paths, a CSV file with "
                                    "a 'path' column, or a folder of images)") from None


def joined(base: str, text: str) -> str:
    """``str(Path(base) / text)`` without pathlib's cost where the plain join is already that path."""
    path = os.path.join(base, text)
    if os.sep != "/" or "//" in path or "/." in path or path.endswith("/"):
        return str(Path(path))
    return path


def _csv_entries(list_path: str, f, base: str) -> Iterator[tuple[str, str]]:
    reader = csv.reader(f)
    header = next(reader, None)
    columns = [c.strip().lower() for c in header or []]
    if "path" not in columns:
        raise InputError(list_path, f"has no 'path' column in its header row (it has: {', '.join(columns) or 'none'})")
    column = columns.index("path")
    for row in reader:
        number = reader.line_num
        text = row[column].strip() if column < len(row) else ""
        if text:
            yield f"{list_path}:{number}", joined(base, text)


def _is_image(name: str) -> bool:
    lower = name.lower()
    return not name.startswith(".") and lower.endswith(IMAGE_SUFFIXES) and not lower.endswith(".seg.nrrd")


def check_entry(entry: Entry) -> None:
    """An input that is not there: one line naming where it was listed."""
    if not os.path.isfile(entry.path):
        where = "" if entry.origin == "argument" else f" (listed at {entry.origin})"
        raise InputError(entry.path, f"does not exist{where}")


def check_unique_names(entries: Iterator[Entry], listed_in: str | None) -> int:
    """Outputs are named after their inputs: two inputs of one name would overwrite each other.
    Returns how many inputs there are (unique_inputs, keeping none of them)."""
    count, _ = unique_inputs(entries, listed_in, lambda entry: False)
    return count


def unique_inputs(entries: Iterator[Entry], listed_in: str | None,
                  keep: Callable[[Entry], bool]) -> tuple[int, list[Entry]]:
    """One pass over the inputs: their names differ (or an InputError naming both places), and the
    entries ``keep`` holds (a shard's) are kept, in order; also returns how many inputs there are.
    Holds each name's first entry (for the message), never an image."""
    seen: dict[str, Entry] = {}
    kept: list[Entry] = []
    count = 0
    for entry in entries:
        count += 1
        earlier = seen.setdefault(entry.name, entry)
        if earlier is not entry:
            raise InputError(entry.path, f"(at {entry.origin}) has the same name '{entry.name}' as {earlier.path} "
                                         f"(at {earlier.origin}); input file names must differ")
        if keep(entry):
            kept.append(entry)
    if not count:
        raise InputError(listed_in, "lists no images")
    return count, kept
