"""Is a volume file whole? Checked before its voxels are used.

SimpleITK reads a truncated NIfTI (``.nii`` or ``.nii.gz``) or Analyze ``.img`` without a word,
filling the missing voxels with zeros, and reads a gzip stream whose checksum fails. So, before a
file is read, for every format the readers accept:

- a gzip file (``.nii.gz``, ...) is decompressed once as a stream (in chunks; memory stays flat),
  which checks that the stream ends where it should and that its CRC-32 and length match;
- the gzip-encoded data of a NRRD (``.nrrd``, ``.seg.nrrd``, ``.nhdr`` with ``encoding: gzip``) and
  the zlib data of a MetaImage (``CompressedData = True``) likewise;
- the header's voxel count and type give the bytes the voxels need, which the (decompressed) data
  must hold: NIfTI, Analyze (``.hdr`` + ``.img``), NRRD (attached or in a detached data file) and
  MetaImage (``.mha``, ``.mhd`` + its data file);
- a DICOM file's pixel data element must hold the bytes its length gives.

``non_finite_nifti`` tells whether a floating-point NIfTI holds NaN or infinite voxels: ITK's
NIfTI reader turns them into zeros, where the other readers keep them (and the reader refuses them).
"""

from __future__ import annotations

import gzip
import math
import os
import struct
import zlib
from collections.abc import Iterator


class DamagedFile(ValueError):
    """The file is truncated or its data fails a check (the message says which)."""

_CHUNK = 1 << 20
_GZIP_MAGIC = b"\x1f\x8b"


def check_file_is_whole(path: str) -> None:
    """Raises DamagedFile when ``path`` (or the data file its header names) is truncated or its
    compressed data is damaged."""
    with open(path, "rb") as f:
        start = f.read(132)
    lower = path.lower()
    if start[:2] == _GZIP_MAGIC:
        header, length = _gzip_stream(path)
        if lower.endswith((".nii.gz", ".nii")):
            _check_nifti_length(path, header, length)
    elif lower.endswith(".nii"):
        with open(path, "rb") as f:
            header = f.read(544)
        _check_nifti_length(path, header, os.path.getsize(path))
    elif lower.endswith((".hdr", ".img")):
        _check_analyze(path)
    elif lower.endswith((".nrrd", ".nhdr")):
        _check_nrrd(path)
    elif lower.endswith((".mha", ".mhd")):
        _check_metaimage(path)
    elif start[128:132] == b"DICM":
        _check_dicom(path)


def _truncated(needed: int, holds: int, what: str = "the file") -> DamagedFile:
    return DamagedFile(f"is truncated: its header describes {needed} bytes of voxels, {what} holds {holds} "
                       "(an incomplete copy or download?)")


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


_NRRD_TYPE_BYTES = {
    1: ("signed char", "int8", "int8_t", "uchar", "unsigned char", "uint8", "uint8_t"),
    2: ("short", "short int", "signed short", "signed short int", "int16", "int16_t", "ushort", "unsigned short",
        "unsigned short int", "uint16", "uint16_t"),
    4: ("int", "signed int", "int32", "int32_t", "uint", "unsigned int", "uint32", "uint32_t", "float"),
    8: ("longlong", "long long", "long long int", "signed long long", "signed long long int", "int64", "int64_t",
        "ulonglong", "unsigned long long", "unsigned long long int", "uint64", "uint64_t", "double"),
}
_NRRD_BYTES = {name: size for size, names in _NRRD_TYPE_BYTES.items() for name in names}


def _check_nrrd(path: str) -> None:
    """NRRD data, attached or in a detached data file (``.nhdr``), raw or gzip: as many bytes as the
    header's sizes and type need; gzip data must decompress whole, checksum included."""
    with open(path, "rb") as f:
        fields = {}
        for raw in _header_lines(f):
            key, sep, value = raw.partition(":")
            if sep and not raw.startswith("#"):
                fields[key.strip().lower()] = value.strip()
        data_start = f.tell()
    needed = _voxel_bytes(fields.get("sizes", ""), _NRRD_BYTES.get(fields.get("type", "").lower()))
    encoding = fields.get("encoding", "").lower()
    skip = _int(fields.get("byte skip", fields.get("byteskip", "0")))
    if _int(fields.get("line skip", fields.get("lineskip", "0"))) != 0 or skip is None or skip < 0:
        return  # data found by counting lines, or at the end of the file: nothing to measure against
    detached = fields.get("data file", fields.get("datafile"))
    if detached is not None:
        if detached.upper().startswith("LIST") or " " in detached.strip() or "%" in detached:
            return  # one data file per slice: the reader checks each
        data_path = detached if os.path.isabs(detached) else os.path.join(os.path.dirname(path), detached)
        if not os.path.isfile(data_path):
            raise DamagedFile(f"names a data file {detached} that is not there")
        what = f"its data file {detached}"
        offset = 0
    else:
        data_path, what, offset = path, "the file", data_start
    if encoding in ("gzip", "gz"):
        _check_compressed(data_path, offset, needed, what, 16 + zlib.MAX_WBITS)  # gzip: CRC-32 and length
    elif encoding == "raw" and needed is not None:
        holds = os.path.getsize(data_path) - offset - skip
        if holds < needed:
            raise _truncated(needed, max(0, holds), what)


def _check_compressed(path: str, offset: int, needed: int | None, what: str, wbits: int) -> None:
    """Compressed data from ``offset`` must end where the stream says and hold ``needed`` bytes."""
    decompressor = zlib.decompressobj(wbits)
    length = 0
    with open(path, "rb") as f:
        f.seek(offset)
        try:
            for chunk in iter(lambda: f.read(_CHUNK), b""):
                length += len(decompressor.decompress(chunk, _CHUNK))
                while decompressor.unconsumed_tail:
                    length += len(decompressor.decompress(decompressor.unconsumed_tail, _CHUNK))
                if decompressor.eof:
                    break
        except zlib.error as error:
            raise DamagedFile(f"is damaged: its compressed data fails the integrity check ({error})") from None
    if not decompressor.eof:
        where = "" if what == "the file" else f" (in {what.replace('its ', '')})"
        raise DamagedFile(f"is truncated: its compressed data ends early{where} (an incomplete copy or download?)")
    if needed is not None and length < needed:
        raise _truncated(needed, length, f"{what} (decompressed)")


def _int(text: str) -> int | None:
    try:
        return int(text.split()[0]) if text.split() else 0
    except ValueError:
        return None


def _voxel_bytes(sizes: str, element_bytes: int | None, components: int = 1) -> int | None:
    """Bytes of the voxels that ``sizes`` (whitespace-separated) describe; None if unknown."""
    try:
        counts = [int(n) for n in sizes.split()]
    except ValueError:
        return None
    if not counts or element_bytes is None or any(n < 0 for n in counts):
        return None
    total = element_bytes * max(1, components)
    for n in counts:
        total *= n
    return total


def _check_analyze(path: str) -> None:
    """An Analyze 7.5 or NIfTI pair: the ``.img`` holds the voxels the ``.hdr`` describes."""
    stem = path[:-4]
    header_path = next((p for p in (stem + ".hdr", stem + ".HDR") if os.path.isfile(p)), None)
    image_path = next((p for p in (stem + ".img", stem + ".IMG") if os.path.isfile(p)), None)
    if header_path is None or image_path is None:
        missing = ".img" if header_path else ".hdr"
        raise DamagedFile(f"is half of an Analyze pair: its {missing} file is not there")
    with open(header_path, "rb") as f:
        header = f.read(348)
    for order in ("<", ">"):
        if len(header) == 348 and struct.unpack(order + "i", header[:4])[0] == 348:
            dims = struct.unpack(order + "8h", header[40:56])
            bitpix = struct.unpack(order + "h", header[72:74])[0]
            offset = struct.unpack(order + "f", header[108:112])[0]
            offset = int(offset) if math.isfinite(offset) and offset > 0 else 0
            needed = _needed(dims, bitpix, 0)
            holds = os.path.getsize(image_path) - offset
            if needed is not None and holds < needed:
                raise _truncated(needed, max(0, holds), f"its {os.path.basename(image_path)}")
            return
    raise DamagedFile("is not an Analyze or NIfTI header (its first field is not 348)")


_META_BYTES = {"MET_CHAR": 1, "MET_UCHAR": 1, "MET_SHORT": 2, "MET_USHORT": 2, "MET_INT": 4, "MET_UINT": 4,
               "MET_LONG": 4, "MET_ULONG": 4, "MET_LONG_LONG": 8, "MET_ULONG_LONG": 8, "MET_FLOAT": 4,
               "MET_DOUBLE": 8}


def _check_metaimage(path: str) -> None:
    """A MetaImage (``.mha`` with its data, ``.mhd`` naming a data file): as many voxel bytes as
    DimSize, ElementType and ElementNumberOfChannels need; zlib data decompresses whole."""
    fields: dict[str, str] = {}
    with open(path, "rb") as f:
        for _ in range(1_000):
            line = f.readline(65_536)
            if not line:
                break
            key, sep, value = line.decode("latin-1").partition("=")
            if sep:
                fields[key.strip().lower()] = value.strip()
            if key.strip().lower() == "elementdatafile":
                break
        data_start = f.tell()
    data_file = fields.get("elementdatafile", "")
    if not data_file:
        raise DamagedFile("is not a whole MetaImage header (it has no ElementDataFile line)")
    header_size = _int(fields.get("headersize", "0"))
    if header_size is None or header_size < 0 or data_file.upper().startswith("LIST") or "%" in data_file \
            or " " in data_file:
        return  # data at the end of the file, or one file per slice: nothing to measure against
    needed = _voxel_bytes(fields.get("dimsize", ""), _META_BYTES.get(fields.get("elementtype", "").upper()),
                          _int(fields.get("elementnumberofchannels", "1")) or 1)
    if data_file.upper() == "LOCAL":
        data_path, what, offset = path, "the file", data_start
    else:
        data_path = data_file if os.path.isabs(data_file) else os.path.join(os.path.dirname(path), data_file)
        if not os.path.isfile(data_path):
            raise DamagedFile(f"names a data file {data_file} that is not there")
        what, offset = f"its data file {data_file}", 0
    if fields.get("compresseddata", "false").lower() == "true":
        _check_compressed(data_path, offset + header_size, needed, what, 32 + zlib.MAX_WBITS)  # zlib or gzip
    elif needed is not None:
        holds = os.path.getsize(data_path) - offset - header_size
        if holds < needed:
            raise _truncated(needed, max(0, holds), what)


_PIXEL_DATA_TAG = b"\xe0\x7f\x10\x00"  # (7FE0,0010) little endian


def _check_dicom(path: str) -> None:
    """A DICOM file's native pixel data element holds the bytes its length gives (encapsulated,
    compressed pixel data ends with a sequence delimiter)."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        data = f.read()
    at = data.rfind(_PIXEL_DATA_TAG)
    if at < 0:
        return  # no pixel data element: GDCM reports it
    vr = data[at + 4:at + 6]
    if vr in (b"OB", b"OW", b"OF", b"OD", b"OL", b"UN"):  # explicit VR: 2 reserved bytes, a 32-bit length
        length_at = at + 8
    else:  # implicit VR: a 32-bit length straight after the tag
        length_at = at + 4
    if length_at + 4 > size:
        raise DamagedFile("is truncated: it ends inside its pixel data element (an incomplete copy or download?)")
    length = struct.unpack("<I", data[length_at:length_at + 4])[0]
    if length == 0xFFFFFFFF:
        if not data.rstrip(b"\x00").endswith(b"\xfe\xff\xdd\xe0\x00\x00\x00\x00") \
                and b"\xfe\xff\xdd\xe0" not in data[-16:]:
            raise DamagedFile("is truncated: its compressed pixel data has no end (an incomplete copy or "
                              "download?)")
        return
    holds = size - (length_at + 4)
    if holds < length:
        raise DamagedFile(f"is truncated: its pixel data element describes {length} bytes, the file holds {holds} "
                          "(an incomplete copy or download?)")


_NIFTI_FLOATS = {16: "f4", 64: "f8"}


def non_finite_nifti(path: str) -> bool:
    """Whether a floating-point NIfTI (``.nii``, ``.nii.gz``) holds NaN or infinite voxels (read in
    chunks: memory stays flat)."""
    import numpy as np

    opener = gzip.open if _starts_with_gzip(path) else open
    with opener(path, "rb") as f:
        header = f.read(544)
        layout = _nifti_float_layout(header)
        if layout is None:
            return False
        dtype, offset = layout
        f.seek(offset)
        chunk = (_CHUNK // dtype.itemsize) * dtype.itemsize
        for block in iter(lambda: f.read(chunk), b""):
            usable = len(block) - len(block) % dtype.itemsize
            if not np.isfinite(np.frombuffer(block[:usable], dtype=dtype)).all():
                return True
    return False


def _starts_with_gzip(path: str) -> bool:
    with open(path, "rb") as f:
        return f.read(2) == _GZIP_MAGIC


def _nifti_float_layout(header: bytes):
    """(numpy dtype, data offset) of a NIfTI-1/2 header of float voxels, else None."""
    import numpy as np

    for order in ("<", ">"):
        if len(header) >= 348 and struct.unpack(order + "i", header[:4])[0] == 348:
            code = struct.unpack(order + "h", header[70:72])[0]
            offset = int(struct.unpack(order + "f", header[108:112])[0])
            kind = _NIFTI_FLOATS.get(code)
            return None if kind is None else (np.dtype(order + kind), max(offset, 348))
        if len(header) >= 540 and struct.unpack(order + "i", header[:4])[0] == 540:
            code = struct.unpack(order + "h", header[12:14])[0]
            offset = struct.unpack(order + "q", header[168:176])[0]
            kind = _NIFTI_FLOATS.get(code)
            return None if kind is None else (np.dtype(order + kind), max(offset, 540))
    return None


def _header_lines(f) -> Iterator[str]:
    """Lines of a NRRD header, up to the blank line before the data (the file is left there)."""
    for _ in range(10_000):
        line = f.readline(65_536)
        if not line or line in (b"\n", b"\r\n"):
            return
        yield line.decode("latin-1").rstrip("\r\n")
