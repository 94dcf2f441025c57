"""4D (cine) images: one file holding a sequence of 3D frames that share one grid.

Read here: NIfTI (``.nii``/``.nii.gz`` with 4 dimensions, time last) and any other 4D format
SimpleITK reads, and NRRD with one list (time) axis, as Slicer's Sequences module writes it
(``.seq.nrrd``: ``kinds: domain domain domain list`` and ``axis 3 index values``; older writers put
the list axis first, ``axis 0 ...``: both are read). SimpleITK would read such a NRRD as a 3D
image with one voxel component per frame, so NRRD goes through pynrrd.

A sequence named NAME (``volumes.volume_name``) has frames NAME_t00, NAME_t01, ... (``frame_name``).
Its voxels stay in the file's type until a frame is asked for, so only one frame at a time is
held as float32. Problems are one line naming the file (``volumes.InputError``).
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

from ..errors import InputError
from ..protocol import frame_name
from .dicom import is_dicom_folder, read_dicom_stack
from .volumes import SPACING_RANGE_MM, Grid, Volume, _first_line, check_whole, volume_name

#: NIfTI ``xyzt_units`` time codes (bits 3-5).
_NIFTI_TIME_UNITS = {8: "s", 16: "ms", 24: "us"}
#: NRRD axis kinds that are not voxel components: an axis of such a kind can be a sequence's list axis.
_LIST_KINDS = {"list", "time", "domain", "space", "none", "???"}
_NRRD_EXTENSIONS = (".nrrd", ".nhdr")
#: Relative tolerance of "equally spaced" time points and of "no spatial step between frames".
_TOLERANCE = 1e-3


@dataclass
class Sequence:
    """A 4D image: ``array`` [t, k, j, i] in the file's voxel type, every frame on ``grid``."""

    name: str
    path: str
    grid: Grid
    array: np.ndarray
    time_step: float | None = None
    time_unit: str | None = None

    @property
    def frame_count(self) -> int:
        return int(self.array.shape[0])

    def frame_names(self) -> list[str]:
        return [frame_name(self.name, i, self.frame_count) for i in range(self.frame_count)]

    def check_frame(self, index: int) -> None:
        if not 0 <= index < self.frame_count:
            raise InputError(self.path, f"has no frame {index}: it has {self.frame_count} frames "
                                        f"(0 to {self.frame_count - 1})")

    def frame(self, index: int) -> Volume:
        """Frame ``index`` as a float32 volume (a copy: the sequence's voxels stay as they are)."""
        self.check_frame(index)
        array = np.ascontiguousarray(self.array[index], dtype=np.float32)
        return Volume(frame_name(self.name, index, self.frame_count), self.path, array, self.grid)

    def frames(self) -> Iterator[Volume]:
        for index in range(self.frame_count):
            yield self.frame(index)

    def header_only(self) -> Sequence:
        """The same sequence without its voxels (name, grid, frame count and time kept)."""
        return Sequence(self.name, self.path, self.grid, np.empty((self.frame_count, 0, 0, 0), np.uint8),
                        self.time_step, self.time_unit)


def _is_nrrd(path: str) -> bool:
    lower = path.lower()
    return lower.endswith(_NRRD_EXTENSIONS) and not lower.endswith(".seg.nrrd")


def is_sequence(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a 4D image file (only its header is read; an unreadable file is not,
    so that the usual reader reports what is wrong with it)."""
    path = str(path)
    if is_dicom_folder(path):  # a cine series, or a study of one series per slice location
        try:
            return read_dicom_stack(path).phase_count > 1
        except InputError:
            return False
    if not os.path.isfile(path):
        return False
    if _is_nrrd(path):
        import nrrd

        try:
            header = nrrd.read_header(path)
        except Exception:  # pynrrd raises several types for a file that is not NRRD
            return False
        if int(header.get("dimension", 0)) != 4:
            return False
        kinds = [str(k).lower() for k in header.get("kinds", ["domain"] * 4)]
        return any(k in ("list", "time") for k in kinds) or all(k in _LIST_KINDS for k in kinds)
    reader = sitk.ImageFileReader()
    reader.SetFileName(path)
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        return False
    return reader.GetDimension() == 4 and reader.GetNumberOfComponents() == 1


def read_sequence(path: str | os.PathLike[str]) -> Sequence:
    """Read and check a 4D image: frames on one grid, a uniform time axis, finite voxel values."""
    path = str(path)
    if is_dicom_folder(path):
        sequence = _read_dicom(path)
    else:
        if not os.path.isfile(path):
            raise InputError(path, "file not found")
        check_whole(path)
        sequence = _read_nrrd(path) if _is_nrrd(path) else _read_sitk(path)
    low, high = SPACING_RANGE_MM
    if not all(math.isfinite(s) and low <= s <= high for s in sequence.grid.spacing):
        raise InputError(path, f"has voxel spacing {'x'.join(f'{s:g}' for s in sequence.grid.spacing)} mm; "
                               f"{low:g} to {high:g} mm are supported (check the file's header)")
    if sequence.array.dtype.kind == "f" and not np.isfinite(sequence.array).all():
        raise InputError(path, "contains NaN or infinite voxel values")
    return sequence


def _read_dicom(path: str) -> Sequence:
    """A DICOM cine: phases ordered by trigger time, slices placed from their tags (dicom.py)."""
    stack = read_dicom_stack(path)
    if stack.phase_count < 2:
        raise InputError(path, "is a DICOM series of one phase; a cine (several phases per slice position) is needed")
    grid = Grid(stack.size, stack.spacing, stack.origin, stack.direction)
    step = stack.time_step_ms()
    return Sequence(volume_name(path), path, grid, stack.read_all(), step, "ms" if step else None)


def _read_sitk(path: str) -> Sequence:
    reader = sitk.ImageFileReader()
    reader.SetFileName(path)
    try:
        image = reader.Execute()
    except RuntimeError as error:
        raise InputError(path, f"cannot be read as an image ({_first_line(error)})") from None
    if image.GetDimension() != 4:
        raise InputError(path, f"is {image.GetDimension()}D; a 4D image (3D frames over time) is needed")
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(path, f"has {image.GetNumberOfComponentsPerPixel()} components per voxel; "
                               "a scalar (grayscale) image is needed")
    direction = np.asarray(image.GetDirection(), dtype=float).reshape(4, 4)
    spacing = np.asarray(image.GetSpacing(), dtype=float)
    # Column 3 is the time axis: any spatial part would move each frame to another place.
    shift = direction[:3, 3] * spacing[3]
    if np.abs(direction[3, :3]).max() > _TOLERANCE or np.linalg.norm(shift) > _TOLERANCE * max(spacing[:3]):
        raise InputError(path, f"frames do not share one grid (each frame is moved by "
                               f"({', '.join(f'{v:.4g}' for v in shift)}) mm from the one before); a 4D "
                               "image of 3D frames on one grid is needed")
    size = image.GetSize()
    grid = Grid(tuple(int(s) for s in size[:3]), tuple(spacing[:3].tolist()), tuple(image.GetOrigin()[:3]),
                tuple(direction[:3, :3].ravel().tolist()))
    array = sitk.GetArrayFromImage(image)  # [t, k, j, i]
    del image
    step, unit = _sitk_time(reader, float(spacing[3]))
    return Sequence(volume_name(path), path, grid, array, step, unit)


def _sitk_time(reader: sitk.ImageFileReader, spacing: float) -> tuple[float | None, str | None]:
    """The time step as the file states it (NIfTI: pixdim[4] in the unit of xyzt_units)."""
    keys = set(reader.GetMetaDataKeys())
    if "pixdim[4]" in keys:
        try:
            step = float(reader.GetMetaData("pixdim[4]"))
            units = int(reader.GetMetaData("xyzt_units")) if "xyzt_units" in keys else 0
        except ValueError:
            return None, None
        return (step if step > 0 and math.isfinite(step) else None), _NIFTI_TIME_UNITS.get(units & 0x38)
    return (spacing if spacing > 0 and math.isfinite(spacing) else None), None


def _read_nrrd(path: str) -> Sequence:
    import nrrd

    try:
        data, header = nrrd.read(path, index_order="C")
    except Exception as error:  # pynrrd raises several types for a damaged file
        raise InputError(path, f"cannot be read as a NRRD image ({_first_line(error)})") from None
    if data.ndim != 4:
        raise InputError(path, f"is {data.ndim}D; a 4D image (3D frames over time) is needed")
    directions = header.get("space directions")
    if directions is None:
        raise InputError(path, "has no 'space directions': the frames' geometry is unknown")
    directions = np.asarray(directions, dtype=float)
    kinds = [str(k).lower() for k in header.get("kinds", ["domain"] * 4)]
    time_axis = _nrrd_time_axis(path, directions, kinds)
    space_dims = directions.shape[1]
    spatial_axes = [a for a in range(4) if a != time_axis]
    vectors = directions[spatial_axes]  # one row per spatial axis (i, j, k)
    step_vector = directions[time_axis]
    if space_dims == 4:  # ITK writes a 4D NRRD with a 4D space: the 4th coordinate is time
        if np.abs(vectors[:, 3]).max() > _TOLERANCE:
            raise InputError(path, "frames do not share one grid (its spatial axes change over time)")
        vectors = vectors[:, :3]
    origin = np.asarray(header.get("space origin", np.zeros(space_dims)), dtype=float)[:3]
    spatial_step = np.nan_to_num(step_vector[:3])
    if np.linalg.norm(spatial_step) > _TOLERANCE * float(np.linalg.norm(vectors, axis=1).max()):
        raise InputError(path, f"frames do not share one grid (each frame is moved by "
                               f"({', '.join(f'{v:.4g}' for v in spatial_step)}) mm from the one before); a 4D "
                               "image of 3D frames on one grid is needed")
    space = str(header.get("space", "left-posterior-superior")).lower()
    if space in ("right-anterior-superior", "ras"):
        flip = np.array([-1.0, -1.0, 1.0])
        vectors, origin = vectors * flip, origin * flip
    elif space not in ("left-posterior-superior", "lps", "3d-right-handed", "scanner-xyz"):
        raise InputError(path, f"has space '{space}'; left-posterior-superior or right-anterior-superior is needed")
    matrix = np.eye(4)
    matrix[:3, :3] = vectors.T
    matrix[:3, 3] = origin
    size = [int(data.shape[3 - a]) for a in spatial_axes]
    grid = Grid.from_ijk_to_lps(size, matrix)
    # C-order array axis of NRRD axis a is 3 - a: frames first, then k, j, i.
    array = np.transpose(data, [3 - time_axis] + [3 - a for a in reversed(spatial_axes)])
    step, unit = _nrrd_time(path, header, time_axis, step_vector, space_dims)
    return Sequence(volume_name(path), path, grid, array, step, unit)


def _nrrd_time_axis(path: str, directions: np.ndarray, kinds: list[str]) -> int:
    """The list axis: the one kind says is a list or time, else the one without a space direction,
    else (ITK's 4D space) the one that points along the 4th coordinate only."""
    by_kind = [a for a, k in enumerate(kinds) if k in ("list", "time")]
    if len(by_kind) == 1:
        return by_kind[0]
    no_direction = [a for a in range(4) if not np.isfinite(directions[a]).all()]
    if len(no_direction) == 1:
        return no_direction[0]
    if directions.shape[1] == 4:
        along_time = [a for a in range(4) if np.isfinite(directions[a]).all() and abs(directions[a, 3]) > 0]
        if len(along_time) == 1:
            return along_time[0]
    if not no_direction:  # four spatial axes: the 4th moves each "frame" in space
        return 3
    raise InputError(path, "has no single list (time) axis; a 4D image of 3D frames over time is needed")


def _nrrd_time(path: str, header: dict, axis: int, step_vector: np.ndarray,
               space_dims: int) -> tuple[float | None, str | None]:
    units = header.get("units")
    unit = str(units[axis]) if units is not None and len(units) == 4 and units[axis] else None
    values_text = header.get(f"axis {axis} index values")
    index_type = str(header.get(f"axis {axis} index type", "numeric")).strip().lower()
    if values_text is not None and index_type == "numeric":
        try:
            values = np.asarray([float(v) for v in str(values_text).split()], dtype=float)
        except ValueError:
            raise InputError(path, f"has unreadable time values in 'axis {axis} index values'") from None
        return _uniform_step(path, values, unit), unit
    if space_dims == 4 and np.isfinite(step_vector).all() and step_vector[3] > 0:
        return float(step_vector[3]), unit
    spacings = header.get("spacings")
    if spacings is not None and len(spacings) == 4 and np.isfinite(spacings[axis]) and spacings[axis] > 0:
        return float(spacings[axis]), unit
    return None, unit


def _uniform_step(path: str, values: np.ndarray, unit: str | None) -> float | None:
    if values.size < 2:
        return None
    steps = np.diff(values)
    step = float(np.mean(steps))
    if not np.isfinite(values).all() or step <= 0 or np.abs(steps - step).max() > _TOLERANCE * abs(step):
        shown = ", ".join(f"{v:g}" for v in values[:6]) + (", ..." if values.size > 6 else "")
        raise InputError(path, f"time axis is not uniform (frames at {shown}{' ' + unit if unit else ''}); "
                               "frames equally spaced in time are needed")
    return step
