"""DICOM image folders: a series, or a study of one series per slice location, as voxels in space and time.

The geometry comes from the tags, never from file names or file order: every image's
ImageOrientationPatient and ImagePositionPatient place it; images are stacked along the normal of
their plane (row x column direction), so k runs along the normal whatever order the files or the
scanner's slices come in. Several images at one position are phases of a cine, ordered by trigger
time, then instance number. One orientation, one image size and pixel spacing, the same number of
phases at every position and equally spaced positions (no missing slice) are required; anything else
is one line naming the folder and the series.

Headers and pixels are read with SimpleITK (GDCM), which applies the rescale slope and intercept.
This module hands out plain arrays and geometry; volumes.py and cine.py build their types from them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

from ..errors import InputError
from .integrity import DamagedFile, check_file_is_whole

#: DICOM tags read from each file (group|element, as GDCM names them).
_TAGS = {"series": "0020|000e", "position": "0020|0032", "orientation": "0020|0037", "pixel_spacing": "0028|0030",
         "trigger": "0018|1060", "instance": "0020|0013", "rows": "0028|0010", "columns": "0028|0011",
         "thickness": "0018|0050", "description": "0008|103e", "series_number": "0020|0011"}
#: Positions closer than this (mm) are one slice position; orientations closer than this (cosines) are one.
_POSITION_MM = 0.01
_ORIENTATION = 1e-3
#: Relative tolerance of "equally spaced" slice positions.
_GAP_TOLERANCE = 0.02


@dataclass
class DicomImage:
    """One image file's place: what orders it in space and time."""

    path: str
    series: str
    series_label: str  # how the series is named in messages: its description and number, or its UID
    position: np.ndarray  # ImagePositionPatient (LPS, mm)
    orientation: np.ndarray  # ImageOrientationPatient: row direction, column direction
    pixel_spacing: tuple[float, float]  # between rows, between columns (mm)
    size: tuple[int, int]  # rows, columns
    trigger_ms: float | None
    instance: int
    thickness: float | None


@dataclass
class DicomStack:
    """A DICOM folder's images in order: ``files[t][k]`` is phase t at slice k (k along the normal)."""

    folder: str
    files: list[list[str]]
    origin: tuple[float, float, float]
    spacing: tuple[float, float, float]  # i (along a row), j (along a column), k (between slices)
    direction: tuple[float, ...]  # 3x3 row-major: columns i, j, k
    trigger_ms: list[float | None]  # per phase, at the first slice
    series: list[str]  # the series UIDs the images come from
    rows: int
    columns: int

    @property
    def size(self) -> tuple[int, int, int]:
        """Voxels along i (columns), j (rows), k (slices)."""
        return self.columns, self.rows, self.slice_count

    @property
    def phase_count(self) -> int:
        return len(self.files)

    @property
    def slice_count(self) -> int:
        return len(self.files[0])

    def time_step_ms(self) -> float | None:
        """The mean step between phases' trigger times, where every phase has one and they increase."""
        times = self.trigger_ms
        if len(times) < 2 or any(t is None for t in times):
            return None
        steps = np.diff(np.asarray(times, dtype=float))
        return float(steps.mean()) if (steps > 0).all() else None

    def read_phase(self, phase: int) -> np.ndarray:
        """Voxels of one phase as float32 [k, j, i]."""
        slices = []
        for path in self.files[phase]:
            array = _read_pixels(path)
            if array.shape != (self.size[1], self.size[0]):
                raise InputError(path, f"holds {array.shape[0]}x{array.shape[1]} pixels where its series has "
                                       f"{self.size[1]}x{self.size[0]}")
            slices.append(array)
        return np.stack(slices).astype(np.float32, copy=False)

    def read_all(self) -> np.ndarray:
        """Voxels of every phase as float32 [t, k, j, i]."""
        return np.stack([self.read_phase(t) for t in range(self.phase_count)])


def is_dicom_file(path: str) -> bool:
    """A DICOM Part 10 file: 'DICM' after the 128-byte preamble."""
    try:
        with open(path, "rb") as f:
            f.seek(128)
            return f.read(4) == b"DICM"
    except OSError:
        return False


def dicom_files(folder: str) -> list[str]:
    """Every DICOM file under ``folder`` (subfolders too: a study of one folder per series), sorted by path."""
    found = []
    for root, folders, names in os.walk(folder):
        folders[:] = sorted(f for f in folders if not f.startswith("."))
        found += [os.path.join(root, n) for n in sorted(names) if not n.startswith(".")
                  and is_dicom_file(os.path.join(root, n))]
    return found


def is_dicom_folder(path: str | os.PathLike[str]) -> bool:
    """A folder holding a DICOM file (it stops at the first)."""
    path = str(path)
    if not os.path.isdir(path):
        return False
    for root, folders, names in os.walk(path):
        folders[:] = [f for f in folders if not f.startswith(".")]
        if any(not n.startswith(".") and is_dicom_file(os.path.join(root, n)) for n in names):
            return True
    return False


def read_dicom_stack(folder: str | os.PathLike[str]) -> DicomStack:
    """Order a folder's DICOM images in space and time from their tags (headers only; no pixels read)."""
    folder = str(folder)
    if not os.path.isdir(folder):
        raise InputError(folder, "folder not found")
    images = [image for image in (_read_header(folder, path) for path in dicom_files(folder)) if image is not None]
    if not images:
        raise InputError(folder, "folder holds no DICOM images")
    return _stack(folder, images)


def _read_header(folder: str, path: str) -> DicomImage | None:
    reader = sitk.ImageFileReader()
    reader.SetImageIO("GDCMImageIO")
    reader.SetFileName(path)
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        raise InputError(path, "cannot be read as a DICOM image") from None
    keys = set(reader.GetMetaDataKeys())

    def tag(name: str) -> str | None:
        key = _TAGS[name]
        return reader.GetMetaData(key).strip() if key in keys else None

    position, orientation = tag("position"), tag("orientation")
    if position is None or orientation is None:
        return None  # not an image placed in space (a report, a segmentation, a secondary capture): not ours
    series = tag("series") or "unknown series"
    description = tag("description") or ""
    number = tag("series_number") or ""
    label = f"series {number} '{description}'" if description else (f"series {number}" if number else series)
    label = f"{label} ({series})" if series not in label else label
    try:
        pixel_spacing = _numbers(tag("pixel_spacing") or "1\\1", 2)
        image = DicomImage(path, series, label, np.asarray(_numbers(position, 3)),
                           np.asarray(_numbers(orientation, 6)), (pixel_spacing[0], pixel_spacing[1]),
                           (int(tag("rows") or 0), int(tag("columns") or 0)),
                           float(tag("trigger")) if tag("trigger") else None, int(float(tag("instance") or 0)),
                           float(tag("thickness")) if tag("thickness") else None)
    except ValueError as error:
        raise InputError(path, f"has an unreadable geometry tag ({error})") from None
    row, column = image.orientation[:3], image.orientation[3:]
    if abs(np.linalg.norm(row) - 1) > 0.01 or abs(np.linalg.norm(column) - 1) > 0.01 or abs(row @ column) > 0.01:
        raise InputError(path, f"has an ImageOrientationPatient that is not two unit vectors at right angles "
                               f"({', '.join(f'{v:g}' for v in image.orientation)})")
    if min(image.pixel_spacing) <= 0:
        raise InputError(path, f"has pixel spacing {image.pixel_spacing[0]:g}\\{image.pixel_spacing[1]:g} mm")
    return image


def _numbers(text: str, count: int) -> list[float]:
    values = [float(v) for v in text.replace(" ", "").split("\\") if v != ""]
    if len(values) != count:
        raise ValueError(f"'{text}' holds {len(values)} numbers, {count} expected")
    return values


def _stack(folder: str, images: list[DicomImage]) -> DicomStack:
    first = images[0]
    for image in images[1:]:
        if np.abs(image.orientation - first.orientation).max() > _ORIENTATION:
            raise InputError(folder, f"mixes slice orientations: {_file(folder, image)} ({image.series_label}) "
                                     f"is oriented {_cosines(image.orientation)}, {_file(folder, first)} "
                                     f"({first.series_label}) {_cosines(first.orientation)}; give one stack of "
                                     "parallel slices")
        if image.size != first.size or np.abs(np.subtract(image.pixel_spacing, first.pixel_spacing)).max() > 1e-4:
            raise InputError(folder, f"mixes image sizes or pixel spacings: {image.series_label} has "
                                     f"{image.size[0]}x{image.size[1]} pixels of {_pair(image.pixel_spacing)} mm, "
                                     f"{first.series_label} {first.size[0]}x{first.size[1]} of "
                                     f"{_pair(first.pixel_spacing)} mm")
    row, column = first.orientation[:3], first.orientation[3:]
    normal = np.cross(row, column)
    positions = _positions(images, normal)
    series_at = [{image.series for image in group} for _, group in positions]
    series = sorted({image.series for image in images})
    if len(series) > 1 and any(len(s) > 1 for s in series_at) or len(series) > len(positions):
        # Several series are one cine only when each holds one slice location (a biobank-style study).
        labels = sorted({image.series_label for image in images})
        raise InputError(folder, f"holds {len(series)} series ({'; '.join(labels[:4])}"
                                 f"{'; ...' if len(labels) > 4 else ''}) that are not one slice location each; "
                                 "give the folder of one series, or a study of one series per slice location")
    counts = [len(group) for _, group in positions]
    if len(set(counts)) > 1:
        fewest = int(np.argmin(counts))
        where, group = positions[fewest]
        raise InputError(folder, f"has inconsistent phases: {counts[fewest]} images at slice position {where:.4g} mm "
                                 f"({group[0].series_label}) but {max(counts)} at another; every slice location "
                                 "needs the same number of phases")
    ordered = [sorted(group, key=_phase_order) for _, group in positions]
    for (where, _), group in zip(positions, ordered):
        keys = [_phase_order(image) for image in group]
        if len(set(keys)) < len(keys):
            raise InputError(folder, f"has two images at slice position {where:.4g} mm ({group[0].series_label}) "
                                     "with the same trigger time and instance number: their order in time is unknown")
    base = ordered[0][0].position
    for group in ordered[1:]:
        offset = group[0].position - base
        in_plane = offset - (offset @ normal) * normal
        if np.linalg.norm(in_plane) > max(_POSITION_MM, 0.05 * min(first.pixel_spacing)):
            raise InputError(folder, f"has slices that are not stacked along their normal: "
                                     f"{group[0].series_label} is shifted by {np.linalg.norm(in_plane):.3g} mm in "
                                     "its plane; give one stack of aligned slices")
    depths = [where for where, _ in positions]
    gap = _slice_gap(folder, depths, ordered, first.thickness)
    spacing = (first.pixel_spacing[1], first.pixel_spacing[0], gap)
    direction = np.column_stack([row, column, normal])
    files = [[group[t].path for group in ordered] for t in range(counts[0])]
    triggers = [group.trigger_ms for group in ordered[0]]
    return DicomStack(folder, files, tuple(float(v) for v in base), tuple(float(v) for v in spacing),
                      tuple(direction.ravel().tolist()), triggers, series, first.size[0], first.size[1])


def _phase_order(image: DicomImage) -> tuple[float, int]:
    return (image.trigger_ms if image.trigger_ms is not None else -np.inf, image.instance)


def _positions(images: list[DicomImage], normal: np.ndarray) -> list[tuple[float, list[DicomImage]]]:
    """Images grouped by their position along the normal, in increasing order."""
    by_depth = sorted(images, key=lambda image: float(image.position @ normal))
    groups: list[tuple[float, list[DicomImage]]] = []
    for image in by_depth:
        depth = float(image.position @ normal)
        if groups and depth - groups[-1][0] <= _POSITION_MM:
            groups[-1][1].append(image)
        else:
            groups.append((depth, [image]))
    return groups


def _slice_gap(folder: str, depths: list[float], ordered: list[list[DicomImage]], thickness: float | None) -> float:
    if len(depths) == 1:
        return float(thickness) if thickness and thickness > 0 else 1.0
    gaps = np.diff(depths)
    step = float(np.median(gaps))
    # The gap farthest from the usual one; of two as far, the wider (a missing slice widens a gap).
    worst = max(range(len(gaps)), key=lambda i: (abs(gaps[i] - step), gaps[i]))
    if abs(gaps[worst] - step) > _GAP_TOLERANCE * step:
        usual = float(np.median(np.delete(gaps, worst)))
        raise InputError(folder, f"has missing or unevenly spaced slices: {gaps[worst]:.4g} mm between slice "
                                 f"positions {depths[worst]:.4g} and {depths[worst + 1]:.4g} mm "
                                 f"({_file(folder, ordered[worst + 1][0])}, {ordered[worst + 1][0].series_label}) "
                                 f"where the others are {usual:.4g} mm apart")
    return float(np.mean(gaps))


def _read_pixels(path: str) -> np.ndarray:
    try:
        check_file_is_whole(path)  # GDCM fills a truncated file's missing pixels with zeros
    except DamagedFile as error:
        raise InputError(path, str(error)) from None
    try:
        image = sitk.ReadImage(path, imageIO="GDCMImageIO")
    except RuntimeError:
        raise InputError(path, "cannot be read as a DICOM image (its pixel data is damaged or in an unsupported "
                               "encoding)") from None
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(path, "is a colour image; a grayscale DICOM series is needed")
    array = sitk.GetArrayFromImage(image)
    if array.ndim == 3 and array.shape[0] == 1:
        array = array[0]
    if array.ndim != 2:
        raise InputError(path, f"holds {array.shape[0]} frames; single-frame DICOM images are read")
    return array


def _file(folder: str, image: DicomImage) -> str:
    """An image's file as messages name it: its path in the folder."""
    return os.path.relpath(image.path, folder)


def _cosines(values: np.ndarray) -> str:
    return ", ".join(f"{v:.3g}" for v in values)


def _pair(values: tuple[float, float]) -> str:
    return f"{values[0]:g}x{values[1]:g}"
