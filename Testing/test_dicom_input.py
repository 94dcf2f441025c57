"""DICOM input: series folders made here from the SYNTHETIC phantoms are read with their geometry from the
tags (an axial one, an oblique one, one whose files run against the slice normal), and cine series
(phases interleaved in the files; a biobank-style study of one series per slice location) as 4D
sequences; inconsistent ones are one line naming the folder and the series."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from dicom_series import on_grid, write_series

from PLCLSegmentationLib.engine.errors import InputError
from PLCLSegmentationLib.engine.files.cine import is_sequence, read_sequence
from PLCLSegmentationLib.engine.files.volumes import Grid, read_volume
from PLCLSegmentationLib.engine.lab.synthetic import _case
from PLCLSegmentationLib.engine.lab.synthetic_cine import make_sequence


def flipped_k(grid: Grid) -> Grid:
    """The same voxels stored with k reversed: the files run against the slice normal."""
    direction = grid.direction_matrix.copy()
    origin = np.asarray(grid.origin) + (grid.size[2] - 1) * grid.spacing[2] * direction[:, 2]
    direction[:, 2] *= -1
    return Grid(grid.size, grid.spacing, tuple(origin.tolist()), tuple(direction.ravel().tolist()))


@pytest.mark.parametrize("kind", ["axial", "oblique", "flipped"])
def test_a_series_is_read_with_its_geometry_from_the_tags(tmp_path, kind):
    voxels, _, grid = _case(0, 0, oblique=kind != "axial")
    if kind == "flipped":  # k against the normal: DICOM's k runs along it, the voxels must land in place
        grid, voxels = flipped_k(grid), voxels[::-1].copy()
    assert abs(np.linalg.det(grid.direction_matrix)) == pytest.approx(1)
    folder = write_series(tmp_path / kind, voxels, grid.spacing, grid.origin, grid.direction_matrix,
                          rng=np.random.default_rng(1))
    assert not is_sequence(folder)
    volume = read_volume(folder)
    assert volume.name == kind
    np.testing.assert_allclose(volume.grid.spacing, grid.spacing, atol=1e-5)
    if kind == "flipped":
        assert np.allclose(volume.grid.direction_matrix[:, 2], -grid.direction_matrix[:, 2], atol=1e-6)
    else:
        np.testing.assert_allclose(volume.grid.ijk_to_lps(), grid.ijk_to_lps(), atol=1e-4)
    assert np.array_equal(on_grid(voxels.astype(np.float32), grid, volume.grid), volume.array)


def _cine(slices: int = 4, frames: int = 6):
    sequence = make_sequence(0, 0, n_frames=frames, slices=slices, pixels=48)
    return sequence, [40.0 * t + 5 for t in range(frames)]


def test_a_cine_series_with_phases_interleaved_in_the_files_is_one_sequence(tmp_path):
    sequence, times = _cine()
    folder = write_series(tmp_path / "cine", sequence.image, sequence.grid.spacing, sequence.grid.origin,
                          sequence.grid.direction_matrix, trigger_ms=times, rng=np.random.default_rng(2))
    assert is_sequence(folder)
    read = read_sequence(folder)
    assert read.frame_count == len(times) and read.time_step == pytest.approx(40.0) and read.time_unit == "ms"
    np.testing.assert_allclose(read.grid.ijk_to_lps(), sequence.grid.ijk_to_lps(), atol=1e-4)
    assert np.array_equal(read.array, sequence.image.astype(np.float32))


def test_phases_without_trigger_times_follow_the_instance_numbers(tmp_path):
    sequence, _ = _cine(slices=3, frames=4)
    folder = write_series(tmp_path / "cine", sequence.image, sequence.grid.spacing, sequence.grid.origin,
                          sequence.grid.direction_matrix, rng=np.random.default_rng(3))
    read = read_sequence(folder)
    assert read.time_step is None and np.array_equal(read.array, sequence.image.astype(np.float32))


def test_a_study_of_one_series_per_slice_location_is_one_sequence(tmp_path):
    sequence, times = _cine()
    order = [2, 0, 3, 1]  # the series come in any order; their positions place them
    folder = write_series(tmp_path / "study", sequence.image, sequence.grid.spacing, sequence.grid.origin,
                          sequence.grid.direction_matrix, trigger_ms=times, order=order, series_per_slice=True,
                          rng=np.random.default_rng(4))
    assert sorted(p.name for p in folder.iterdir()) == [f"slice{k:02d}" for k in range(4)]
    read = read_sequence(folder)
    np.testing.assert_allclose(read.grid.ijk_to_lps(), sequence.grid.ijk_to_lps(), atol=1e-4)
    assert np.array_equal(read.array, sequence.image.astype(np.float32))


# --- inconsistent ones: one line naming the folder (and the series) -----------------------------------


def _break(folder: Path, how: str) -> None:
    import pydicom

    files = sorted(folder.rglob("*.dcm"))
    if how == "missing_slice":  # every phase of one inner slice location removed
        shutil.rmtree(folder / "slice01")
    elif how == "missing_phase":
        files[0].unlink()
    elif how == "mixed_orientation":
        ds = pydicom.dcmread(files[0])
        ds.ImageOrientationPatient = [0, 1, 0, 0, 0, -1]
        ds.save_as(files[0])


@pytest.mark.parametrize(("how", "fragments"), [
    ("missing_slice", ("missing or unevenly spaced slices", "series 102 'cine sax 2'")),
    ("missing_phase", ("inconsistent phases", "'cine sax")),
    ("mixed_orientation", ("mixes slice orientations", "'cine sax")),
])
def test_an_inconsistent_study_is_one_line_naming_the_series(tmp_path, how, fragments):
    sequence, times = _cine()
    folder = write_series(tmp_path / "study", sequence.image, sequence.grid.spacing, sequence.grid.origin,
                          sequence.grid.direction_matrix, trigger_ms=times, series_per_slice=True)
    _break(folder, how)
    with pytest.raises(InputError) as error:
        read_sequence(folder)
    assert str(error.value).startswith(str(folder)) and "\n" not in str(error.value)
    for fragment in fragments:
        assert fragment in str(error.value)
    assert not is_sequence(folder)  # so that the reader of volumes reports the same line
    with pytest.raises(InputError, match=fragments[0]):
        read_volume(folder)
