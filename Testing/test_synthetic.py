"""The SYNTHETIC demo dataset: layout, content, real oblique geometry, determinism."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from PLCLSegmentationLib.engine.files.volumes import Grid, read_annotation, read_volume
from PLCLSegmentationLib.engine.lab import synthetic


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return synthetic.make_synthetic_dataset(tmp_path_factory.mktemp("synthetic") / "demo")


def _cases(dataset: Path) -> list[str]:
    description = json.loads((dataset / "dataset.json").read_text())
    return [c for split in description["cases"].values() for c in split]


def test_dataset_json_says_synthetic_and_lists_every_case(dataset: Path) -> None:
    description = json.loads((dataset / "dataset.json").read_text())
    assert "SYNTHETIC" in description["name"]
    assert "synthetic" in description["description"].lower()
    assert "PLCLSegmentation" in description["description"]
    assert description["labels"] == {"0": "background", "1": "right ventricle", "2": "myocardium",
                                     "3": "left ventricle"}
    assert isinstance(description["geometry"], str) and description["geometry"]
    train, val = description["cases"]["train"], description["cases"]["val"]
    assert len(train) == 6 and len(val) == 2 and not set(train) & set(val)
    names = sorted(train + val)
    assert sorted(p.name[: -len(".nii.gz")] for p in (dataset / "images").iterdir()) == names
    assert sorted(p.name[: -len(".nii.gz")] for p in (dataset / "labels").iterdir()) == names
    assert not [p for p in dataset.rglob(".*")], "temporary files left behind"
    assert all((p.stat().st_mode & 0o777) != 0o600 for p in dataset.rglob("*.nii.gz")), "files left private"


def test_small_enough_to_embed(dataset: Path) -> None:
    total = sum(p.stat().st_size for p in dataset.rglob("*") if p.is_file())
    assert total < 3 * 1024 * 1024, f"dataset is {total / 2**20:.2f} MiB"


def test_cases_are_readable_labelled_and_heart_like(dataset: Path) -> None:
    for case in _cases(dataset):
        image_path = dataset / "images" / f"{case}.nii.gz"
        label_path = dataset / "labels" / f"{case}.nii.gz"
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(image_path))
        reader.ReadImageInformation()
        assert reader.GetPixelID() in (sitk.sitkInt16, sitk.sitkUInt16)
        reader.SetFileName(str(label_path))
        reader.ReadImageInformation()
        assert reader.GetPixelID() == sitk.sitkUInt8

        volume = read_volume(image_path)
        labels, classes = read_annotation(label_path, volume)  # raises unless on the image's grid
        assert classes is None
        assert set(np.unique(labels).tolist()) == {0, 1, 2, 3}, case

        spacing = np.asarray(volume.grid.spacing)
        thick = int(np.argmax(spacing))
        assert 8.0 <= spacing[thick] <= 10.0
        assert all(1.2 <= s <= 1.8 for a, s in enumerate(spacing) if a != thick)
        size = np.asarray(volume.grid.size)
        assert 8 <= size[thick] <= 12 and all(120 <= n <= 160 for a, n in enumerate(size) if a != thick)

        # blood is brighter than myocardium, and the LV is enclosed by myocardium within each slice
        image = volume.array
        assert np.median(image[labels == 3]) > 2 * np.median(image[labels == 2])
        assert np.median(image[labels == 1]) > 2 * np.median(image[labels == 2])
        slices_first = np.moveaxis(labels, 2 - thick, 0)  # numpy axis of the thick ITK axis
        in_plane = np.zeros((3, 3, 3), dtype=bool)
        in_plane[1, 1, :] = in_plane[1, :, 1] = True
        around_lv = ndimage.binary_dilation(slices_first == 3, structure=in_plane) & (slices_first != 3)
        assert set(np.unique(slices_first[around_lv]).tolist()) == {2}, case


def test_geometry_is_oblique_and_some_cases_are_permuted(dataset: Path) -> None:
    thick_axes = set()
    left_handed = 0
    for case in _cases(dataset):
        grid = Grid.of(sitk.ReadImage(str(dataset / "images" / f"{case}.nii.gz")))
        direction = grid.direction_matrix
        assert np.allclose(direction.T @ direction, np.eye(3), atol=1e-4)
        assert np.abs(direction).max() < 0.99, f"{case}: direction is not oblique: {direction}"
        assert np.linalg.norm(grid.origin) > 1.0
        thick_axes.add(int(np.argmax(grid.spacing)))
        left_handed += np.linalg.det(direction) < 0
    assert 0 in thick_axes and 2 in thick_axes  # the slice axis stored first in some cases
    assert left_handed >= 1  # flipped storage


def test_reorienting_storage_keeps_every_voxel_in_place() -> None:
    rng = np.random.default_rng(3)
    array = rng.integers(0, 1000, size=(5, 7, 6)).astype(np.int16)
    rotation, _ = np.linalg.qr(rng.standard_normal((3, 3)))
    grid = Grid((6, 7, 5), (1.3, 1.7, 9.0), (4.0, -3.0, 20.0), tuple(rotation.ravel().tolist()))
    old = grid.apply_to(sitk.GetImageFromArray(array))
    for perm, flips in [((2, 0, 1), (False, False, False)), ((1, 0, 2), (False, True, True)),
                        ((0, 2, 1), (True, False, False))]:
        moved, new_grid = synthetic._reorient(array, grid, perm, flips)
        new = new_grid.apply_to(sitk.GetImageFromArray(moved))
        assert new.GetSize() == tuple(grid.size[p] for p in perm)
        for index in [(0, 0, 0), (1, 2, 3), tuple(n - 1 for n in new.GetSize())]:
            point = new.TransformIndexToPhysicalPoint(index)
            old_index = old.TransformPhysicalPointToIndex(point)
            assert np.allclose(old.TransformIndexToPhysicalPoint(old_index), point, atol=1e-6)
            assert new[index] == old[old_index]


def test_same_seed_same_data_and_cases_do_not_depend_on_n_cases(tmp_path: Path, dataset: Path) -> None:
    first = synthetic.make_synthetic_dataset(tmp_path / "a", n_cases=2, seed=0)
    again = synthetic.make_synthetic_dataset(tmp_path / "b", n_cases=2, seed=0)
    other = synthetic.make_synthetic_dataset(tmp_path / "c", n_cases=2, seed=1)
    for case in _cases(first):
        for kind in ("images", "labels"):
            a = sitk.ReadImage(str(first / kind / f"{case}.nii.gz"))
            for twin in (again, dataset):
                b = sitk.ReadImage(str(twin / kind / f"{case}.nii.gz"))
                assert Grid.of(a) == Grid.of(b)
                assert np.array_equal(sitk.GetArrayFromImage(a), sitk.GetArrayFromImage(b))
            c = sitk.ReadImage(str(other / kind / f"{case}.nii.gz"))
            assert Grid.of(a) != Grid.of(c)
    assert json.loads((first / "dataset.json").read_text())["cases"] == {"train": ["synthetic_001"],
                                                                         "val": ["synthetic_002"]}


def test_plain_geometry_and_argument_checks(tmp_path: Path) -> None:
    out = synthetic.make_synthetic_dataset(tmp_path / "plain", n_cases=1, seed=5, oblique=False)
    description = json.loads((out / "dataset.json").read_text())
    assert description["cases"] == {"train": ["synthetic_001"], "val": []}
    grid = Grid.of(sitk.ReadImage(str(out / "images" / "synthetic_001.nii.gz")))
    assert np.allclose(grid.direction_matrix, np.eye(3)) and np.allclose(grid.origin, 0.0)
    assert int(np.argmax(grid.spacing)) == 2
    with pytest.raises(ValueError):
        synthetic.make_synthetic_dataset(tmp_path / "none", n_cases=0)
