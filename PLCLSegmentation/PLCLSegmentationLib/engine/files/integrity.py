"""Is a volume file whole? Checked before its voxels are used.

SimpleITK reads a truncated NIfTI (``.nii`` or ``.nii.gz``) without a word, filling the missing
voxels with zeros, and reads a gzip stream whose checksum fails. So, before a file is read:

- a gzip file (``.nii.gz``, ...) is decompressed once as a stream (in chunks; memory stays flat),
  which checks that the stream ends where it should and that its CRC-32 and length match;
- the gzip-encoded data of a NRRD (``.nrrd``, ``.seg.nrrd`` with ``encoding: gzip``) likewise;
- a NIfTI header's voxel count and type give the bytes the voxels need, which the (decompressed)
  file must hold.
"""

from __future__ import annotations

import gzip
import os
import struct
import zlib
from collections.abc import Iterator


class DamagedFile(ValueError):
    """The file is truncated or its data fails a check (the message says which)."""

_CHUNK = 1 << 20
_GZIP_MAGIC = b"\x1f\x8b"


def check_file_is_whole(path: str) -> None:
    """Raises DamagedFile when ``path`` is truncated or its compressed data is damaged."""
    with open(path, "rb") as f:
        start = f.read(2)
    lower = path.lower()
    if start == _GZIP_MAGIC:
        header, length = _gzip_stream(path)
        if lower.endswith((".nii.gz", ".nii")):
            _check_nifti_length(path, header, length)
    elif lower.endswith(".nii"):
        with open(path, "rb") as f:
            header = f.read(544)
        _check_nifti_length(path, header, os.path.getsize(path))
    elif lower.endswith(".nrrd"):
        _check_nrrd(path)


def _gzip_stream(path: str) -> tuple[bytes, int]:
    """The first bytes of the decompressed stream and its whole length; the gzip module checks the
    end-of-stream marker, the CRC-32 and the length recorded in the trailer."""
    header = b""
    length = 0
    try:
        with gzip.open(path, "rb") as f:
            for chunk in iter(lambda: f.read(_CHUNK), b""):
                if len(header) < 544:
                    header += chunk[: 544 - len(header)]
                length += len(chunk)
    except EOFError:
        raise DamagedFile("is truncated: its compressed data ends early (an incomplete copy or download?)") \
            from None
    except (OSError, zlib.error) as error:  # gzip.BadGzipFile is an OSError
        raise DamagedFile(f"is damaged: its compressed data fails the integrity check ({error})") from None
    return header, length


def _check_nifti_length(path: str, header: bytes, length: int) -> None:
    needed = _nifti_bytes_needed(header)
    if needed is not None and length < needed:
        raise DamagedFile(f"is truncated: its header describes {needed} bytes of header and voxels, the file "
                               f"holds {length} (an incomplete copy or download?)")


def _nifti_bytes_needed(header: bytes) -> int | None:
    """Header plus voxel bytes of a NIfTI-1 or NIfTI-2 header; None if it is not one."""
    for order in ("<", ">"):
        if len(header) >= 348 and struct.unpack(order + "i", header[:4])[0] == 348:  # NIfTI-1
            dims = struct.unpack(order + "8h", header[40:56])
            bitpix = struct.unpack(order + "h", header[72:74])[0]
            offset = int(struct.unpack(order + "f", header[108:112])[0])
            return _needed(dims, bitpix, max(offset, 348))
        if len(header) >= 540 and struct.unpack(order + "i", header[:4])[0] == 540:  # NIfTI-2
            bitpix = struct.unpack(order + "h", header[14:16])[0]
            dims = struct.unpack(order + "8q", header[16:80])
            offset = struct.unpack(order + "q", header[168:176])[0]
            return _needed(dims, bitpix, max(offset, 540))
    return None


def _needed(dims: tuple[int, ...], bitpix: int, offset: int) -> int | None:
    rank = dims[0]
    if not 1 <= rank <= 7 or bitpix <= 0:
        return None
    count = 1
    for n in dims[1:rank + 1]:
        count *= max(1, n)
    return offset + count * bitpix // 8


def _check_nrrd(path: str) -> None:
    """Gzip-encoded NRRD data (attached to the header) must decompress whole, checksum included."""
    with open(path, "rb") as f:
        fields = {}
        for raw in _header_lines(f):
            key, sep, value = raw.partition(":")
            if sep:
                fields[key.strip().lower()] = value.strip().lower()
        if "data file" in fields or "datafile" in fields:
            return  # detached data: the reader checks the data file's size
        if fields.get("encoding") not in ("gzip", "gz"):
            return
        decompressor = zlib.decompressobj(16 + zlib.MAX_WBITS)  # gzip wrapper: CRC-32 and length checked
        try:
            for chunk in iter(lambda: f.read(_CHUNK), b""):
                decompressor.decompress(chunk, _CHUNK)
                while decompressor.unconsumed_tail:
                    decompressor.decompress(decompressor.unconsumed_tail, _CHUNK)
                if decompressor.eof:
                    break
        except zlib.error as error:
            raise DamagedFile(f"is damaged: its compressed data fails the integrity check ({error})") from None
        if not decompressor.eof:
            raise DamagedFile("is truncated: its compressed data ends early (an incomplete copy or download?)")


def _header_lines(f) -> Iterator[str]:
    """Lines of a NRRD header, up to the blank line before the data (the file is left there)."""
    for _ in range(10_000):
        line = f.readline(65_536)
        if not line or line in (b"\n", b"\r\n"):
            return
        yield line.decode("latin-1").rstrip("\r\n")
