"""DICOM SEG: a label map written as a BINARY segmentation of the DICOM images it was predicted on.

One frame per source image and segment, each image matched to its slice of the label map by its
position in space (ImagePositionPatient projected onto the label map's grid), never by the order of
files or arrays: a label map on a grid whose rows, columns or slices do not land on the images is
refused rather than resampled. Every segment carries its name, colour, terminology codes (the
class's own where it has them, a generic 'Tissue' otherwise) and the algorithm that made it (name,
version, model identifier). Written with highdicom, the optional ``dicom`` extra, imported only here.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import ConfigError, InputError
from .volumes import ClassInfo, Grid, atomic_path

#: What ``pip install`` needs for DICOM SEG (the optional extra).
INSTALL_HINT = "pip install 'plcl-segmentation[dicom]' (highdicom and pydicom)"
#: Where a class has no terminology: SNOMED CT 'Tissue' as category and type.
GENERIC_CODE = ("85756007", "SCT", "Tissue")
#: How far (voxels) an image may lie from a voxel centre of the label map's grid and still be its slice.
_VOXEL_TOLERANCE = 0.01


@dataclass(frozen=True)
class Algorithm:
    """Who made the segmentation: written into every segment's algorithm identification."""

    name: str
    version: str
    model: str  # an identifier of the model (its file name and digest)


def require_highdicom() -> None:
    """A usage error (one line) where the optional packages are missing."""
    try:
        import highdicom  # noqa: F401
        import pydicom  # noqa: F401
    except ImportError as error:
        raise ConfigError(f"--format dicom-seg needs the optional package {error.name}: {INSTALL_HINT}") from None


def write_dicom_seg(path: str | os.PathLike[str], labels: np.ndarray, grid: Grid, classes: Sequence[ClassInfo],
                    source_files: Sequence[str], algorithm: Algorithm, series_description: str) -> None:
    """Write ``labels`` ([k, j, i], class values) on ``grid`` as a DICOM SEG of ``source_files``."""
    require_highdicom()
    import highdicom as hd
    import pydicom
    from pydicom.sr.codedict import codes

    sources = [pydicom.dcmread(f, stop_before_pixels=True) for f in source_files]
    segment_of = np.zeros(256, dtype=np.uint8)  # class value -> segment number 1..n
    for number, info in enumerate(classes, start=1):
        segment_of[info.value] = number
    slices = [_slice_of(f, ds, grid) for f, ds in zip(source_files, sources)]
    frames = np.stack([segment_of[labels[k]] for k in slices])
    source_images, further = sources, None
    series = [ds.SeriesInstanceUID for ds in sources]
    if len(set(series)) > 1:  # one series per slice location: highdicom takes the slices as a volume in space
        if sorted(slices) != list(range(grid.size[2])):
            raise InputError(source_files[0], "the images of its study do not cover every slice of the segmentation")
        affine = grid.ijk_to_lps()[:, [2, 1, 0, 3]]  # (slice, row, column) indices to LPS
        frames = hd.Volume(segment_of[labels], affine, "PATIENT", str(sources[0].FrameOfReferenceUID))
        source_images = [ds for ds in sources if ds.SeriesInstanceUID == series[0]]
        further = [ds for ds in sources if ds.SeriesInstanceUID != series[0]]
    family = codes.cid7162.ArtificialIntelligence
    identification = hd.AlgorithmIdentificationSequence(name=algorithm.name, family=family,
                                                         version=algorithm.version,
                                                         parameters={"model": algorithm.model})
    descriptions = [hd.seg.SegmentDescription(
        segment_number=number, segment_label=info.name[:64],
        segmented_property_category=_code(hd, (info.terminology or {}).get("category")),
        segmented_property_type=_code(hd, (info.terminology or {}).get("type")),
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC, algorithm_identification=identification,
        anatomic_regions=_regions(hd, info.terminology),
        display_color=hd.color.CIELabColor.from_rgb(*[round(255 * min(max(c, 0.0), 1.0)) for c in info.color]))
        for number, info in enumerate(classes, start=1)]
    first = sources[0]
    series_number = 1000 + int(first.get("SeriesNumber", 0) or 0) % 1000
    # The source's own SOP class and transfer syntax are kept by highdicom; frames left in even where empty
    # (one per image and segment), so every image has its frames.
    segmentation = hd.seg.Segmentation(
        source_images=source_images, further_source_images=further, pixel_array=frames,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions, series_instance_uid=hd.UID(), series_number=series_number,
        sop_instance_uid=hd.UID(), instance_number=1, manufacturer=algorithm.name,
        manufacturer_model_name=algorithm.name, software_versions=algorithm.version, device_serial_number="none",
        series_description=series_description[:64], content_label="PLCL", omit_empty_frames=False,
        content_description=f"{algorithm.name} {algorithm.version}: {algorithm.model}"[:64])
    with atomic_path(path) as tmp:
        segmentation.save_as(tmp)


def _slice_of(path: str, ds: Any, grid: Grid) -> int:
    """The label map's slice k that ``ds`` lies on, found from its position and orientation in space."""
    try:
        position = np.asarray([float(v) for v in ds.ImagePositionPatient])
        orientation = np.asarray([float(v) for v in ds.ImageOrientationPatient])
        rows, columns = int(ds.Rows), int(ds.Columns)
    except (AttributeError, TypeError, ValueError):
        raise InputError(path, "has no image position, orientation or size: a DICOM SEG cannot refer to it") from None
    index = (np.linalg.inv(grid.ijk_to_lps()) @ np.append(position, 1.0))[:3]
    axes = grid.direction_matrix
    k = int(round(index[2]))
    on_grid = (np.abs(index[:2]).max() <= _VOXEL_TOLERANCE and abs(index[2] - k) <= _VOXEL_TOLERANCE
               and 0 <= k < grid.size[2] and (columns, rows) == tuple(grid.size[:2])
               and np.allclose(orientation[:3], axes[:, 0], atol=1e-4) and np.allclose(orientation[3:], axes[:, 1],
                                                                                        atol=1e-4))
    if not on_grid:
        raise InputError(path, f"does not lie on a slice of the segmentation's grid ({grid.describe()}); a DICOM SEG "
                               "is written only on the grid of the images it segments")
    return k


def _code(hd: Any, code: Any) -> Any:
    """A terminology entry [scheme, value, meaning] (Slicer's order) as a coded concept; generic if absent."""
    if isinstance(code, (list, tuple)) and len(code) >= 3 and all(str(c).strip() for c in code[:3]):
        scheme, value, meaning = (str(c) for c in code[:3])
        return hd.sr.CodedConcept(value=value, scheme_designator=scheme, meaning=meaning[:64])
    value, scheme, meaning = GENERIC_CODE
    return hd.sr.CodedConcept(value=value, scheme_designator=scheme, meaning=meaning)


def _regions(hd: Any, terminology: dict[str, Any] | None) -> list[Any] | None:
    region = (terminology or {}).get("anatomicRegion")
    if isinstance(region, (list, tuple)) and len(region) >= 3 and all(str(c).strip() for c in region[:3]):
        return [_code(hd, region)]
    return None
