"""DICOM series made in the tests (pydicom) from arrays on a known grid: MR images with every tag a DICOM
SEG's source needs, written slice by slice in any file order, as one series, one series per slice
location (a biobank-style short-axis study), or with several phases per slice position (cine)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import SimpleITK as sitk
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid


def _base(study: str, frame_of_reference: str, series: str, series_number: int, description: str) -> FileDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MRImageStorage
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(None, {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = MRImageStorage
    ds.Modality = "MR"
    ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = "Phantom^Synthetic", "SYN001", "", "O"
    ds.StudyInstanceUID, ds.StudyID, ds.StudyDate, ds.StudyTime = study, "1", "20260101", "120000"
    ds.AccessionNumber, ds.ReferringPhysicianName = "", ""
    ds.SeriesInstanceUID, ds.SeriesNumber, ds.SeriesDescription = series, series_number, description
    ds.FrameOfReferenceUID, ds.PositionReferenceIndicator = frame_of_reference, ""
    ds.Manufacturer = "PLCL tests"
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    return ds


def write_slice(path: Path, pixels: np.ndarray, position, row, column, spacing_ij, thickness: float, *, study: str,
                frame_of_reference: str, series: str, series_number: int = 1, description: str = "synthetic",
                instance: int = 1, trigger_ms: float | None = None) -> Path:
    """One MR image: ``pixels`` [rows, columns] (whole numbers), its first pixel at ``position`` (LPS)."""
    ds = _base(study, frame_of_reference, series, series_number, description)
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.InstanceNumber = instance
    ds.ImagePositionPatient = [f"{v:.6f}" for v in position]
    ds.ImageOrientationPatient = [f"{v:.8f}" for v in list(row) + list(column)]
    ds.PixelSpacing = [f"{spacing_ij[1]:.6f}", f"{spacing_ij[0]:.6f}"]  # between rows, between columns
    ds.SliceThickness = f"{thickness:.6f}"
    if trigger_ms is not None:
        ds.TriggerTime = f"{trigger_ms:.3f}"
    ds.Rows, ds.Columns = pixels.shape
    ds.PixelData = np.ascontiguousarray(pixels, dtype=np.int16).tobytes()
    pydicom.dcmwrite(path, ds, enforce_file_format=True)
    return path


def write_series(folder: Path, volume: np.ndarray, spacing, origin, direction: np.ndarray, *,
                 order: list[int] | None = None, trigger_ms: list[float] | None = None,
                 series_per_slice: bool = False, rng: np.random.Generator | None = None) -> Path:
    """Write ``volume`` ([k, j, i], or [t, k, j, i] for a cine) on the grid (spacing i, j, k; origin; 3x3
    direction, columns i, j, k) as DICOM files named in a shuffled order (``rng``) or in ``order`` of k.

    A cine writes every phase of a slice position with its trigger time; ``series_per_slice`` gives each
    slice location a series of its own, in a subfolder (a biobank-style study)."""
    folder.mkdir(parents=True, exist_ok=True)
    phases = volume if volume.ndim == 4 else volume[None]
    direction = np.asarray(direction, dtype=float).reshape(3, 3)
    row, column, normal = direction[:, 0], direction[:, 1], direction[:, 2]
    study, frame_of_reference, series = generate_uid(), generate_uid(), generate_uid()
    slices = list(range(phases.shape[1])) if order is None else list(order)
    items = [(t, k) for k in slices for t in range(phases.shape[0])]
    names = list(range(len(items)))
    if rng is not None:
        rng.shuffle(names)
    series_of = {k: generate_uid() for k in slices}
    for (t, k), name in zip(items, names):
        position = np.asarray(origin, dtype=float) + k * spacing[2] * normal
        where = folder / f"slice{k:02d}" if series_per_slice else folder
        where.mkdir(exist_ok=True)
        write_slice(where / f"IM{name:05d}.dcm", phases[t, k], position, row, column, spacing[:2], spacing[2],
                    study=study, frame_of_reference=frame_of_reference,
                    series=series_of[k] if series_per_slice else series,
                    series_number=100 + k if series_per_slice else 1,
                    description=f"cine sax {k}" if series_per_slice else "synthetic",
                    instance=t * len(slices) + k + 1,
                    trigger_ms=None if trigger_ms is None else trigger_ms[t])
    return folder


def on_grid(array: np.ndarray, source, target) -> np.ndarray:
    """``array`` on grid ``source`` moved voxel for voxel onto grid ``target`` (nearest neighbour: exact
    where the grids share their voxel centres, which is checked)."""
    to_source = np.linalg.inv(source.ijk_to_lps()) @ target.ijk_to_lps()
    assert np.allclose(to_source, np.round(to_source), atol=1e-3), to_source
    image = source.apply_to(sitk.GetImageFromArray(array))
    reference = target.apply_to(sitk.GetImageFromArray(np.zeros(target.size[::-1], array.dtype)))
    return sitk.GetArrayFromImage(sitk.Resample(image, reference, sitk.Transform(), sitk.sitkNearestNeighbor))
