"""Geometry: slicing, resampling and writing keep every volume's exact grid, oblique and anisotropic."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import SimpleITK as sitk
import slicerio
import torch
from conftest import make_image, phantom, rotation

from PLCLSegmentationLib.engine.errors import InputError
from PLCLSegmentationLib.engine.files.volumes import (
    ClassInfo,
    Grid,
    read_annotation,
    read_volume,
    write_image,
    write_segmentation,
)
from PLCLSegmentationLib.engine.method.predict import map_to_volume
from PLCLSegmentationLib.engine.method.preprocess import in_plane_frame, prepare_volume, slice_layout

OBLIQUE = rotation(0.3, -0.2, 0.5)


def _grids_equal(a: sitk.Image, b: sitk.Image) -> None:
    assert a.GetSize() == b.GetSize()
    np.testing.assert_allclose(a.GetSpacing(), b.GetSpacing(), rtol=1e-6)
    np.testing.assert_allclose(a.GetOrigin(), b.GetOrigin(), atol=1e-5)
    np.testing.assert_allclose(a.GetDirection(), b.GetDirection(), atol=1e-6)


@pytest.mark.parametrize("permutation", list(itertools.permutations(range(3))))
def test_slices_are_taken_along_the_coarsest_axis_whatever_the_storage_order(permutation):
    # The 10 mm axis is stored as array axis `permutation.index(0)`; direction columns follow.
    base_spacing = np.array([1.5, 1.25, 10.0])  # i, j, k of the unpermuted volume
    spacing = base_spacing[list(permutation)]
    direction = OBLIQUE[:, list(permutation)] * np.array([1, -1, 1])  # flipped and oblique
    grid = Grid((20, 30, 40), tuple(spacing), (0.0, 0.0, 0.0), tuple(direction.ravel()))
    layout = slice_layout(grid)
    assert layout.slice_spacing == pytest.approx(10.0)
    assert sorted(layout.in_plane_spacing) == pytest.approx([1.25, 1.5])
    array = np.random.default_rng(0).random(grid.size[::-1])
    stack = layout.to_stack(array)
    assert stack.shape == layout.native_shape
    np.testing.assert_array_equal(layout.from_stack(stack), array)


def test_canonical_orientation_is_independent_of_how_the_volume_is_stored():
    """The same physical volume stored flipped must give the same slices."""
    image, _ = phantom()
    image = image.astype(np.float32)
    grid = Grid(image.shape[::-1], (1.0, 1.0, 5.0), (0.0, 0.0, 0.0), tuple(np.eye(3).ravel()))
    flipped_direction = np.diag([-1.0, 1.0, -1.0])
    flipped = image[::-1, :, ::-1]
    grid_flipped = Grid(image.shape[::-1], (1.0, 1.0, 5.0), (0.0, 0.0, 0.0), tuple(flipped_direction.ravel()))
    np.testing.assert_array_equal(slice_layout(grid).to_stack(image), slice_layout(grid_flipped).to_stack(flipped))


def test_prediction_lands_on_the_exact_grid_of_an_oblique_anisotropic_volume(tmp_path):
    image_array, labels = phantom((6, 50, 44))
    image = make_image(image_array, spacing=(0.8, 1.1, 8.0), direction=OBLIQUE)
    path = tmp_path / "oblique.nrrd"
    sitk.WriteImage(image, str(path))
    volume = read_volume(path)
    prepared, _ = prepare_volume(volume, target_spacing=1.3, percentiles=(1, 99), labels=labels, num_classes=3)
    assert prepared.images.shape[1:] == (round(50 * 0.8 / 1.3), round(44 * 1.1 / 1.3)) or \
        prepared.images.shape[1:] == (round(50 * 1.1 / 1.3), round(44 * 0.8 / 1.3))
    # A perfect "network": one-hot of the resampled labels, mapped back to the volume.
    probs = torch.nn.functional.one_hot(prepared.labels.long(), 3).permute(0, 3, 1, 2).float()
    result = map_to_volume(prepared, probs)
    assert result.labels.shape == labels.shape
    for cls in (1, 2):
        a, b = result.labels == cls, labels == cls
        assert 2 * (a & b).sum() / (a.sum() + b.sum()) > 0.93
    classes = [ClassInfo(1, "ring", (0.9, 0.1, 0.1)), ClassInfo(2, "disc", (0.1, 0.2, 0.9))]
    seg_path = tmp_path / "out" / "oblique.seg.nrrd"
    seg_path.parent.mkdir()
    write_segmentation(seg_path, result.labels, volume.grid, classes)
    write_image(tmp_path / "out" / "unc.nrrd", result.uncertainty, volume.grid)
    _grids_equal(sitk.ReadImage(str(seg_path)), image)
    _grids_equal(sitk.ReadImage(str(tmp_path / "out" / "unc.nrrd")), image)
    # Read independently with slicerio: names, colours, label values and the voxels themselves.
    seg = slicerio.read_segmentation(str(seg_path))
    assert [s["name"] for s in seg["segments"]] == ["ring", "disc"]
    assert seg["segments"][0]["color"] == pytest.approx([0.9, 0.1, 0.1])
    np.testing.assert_array_equal(seg["voxels"].transpose(2, 1, 0), result.labels)
    assert not list((tmp_path / "out").glob(".*partial*")), "no temporary file may remain"


def test_seg_nrrd_cropped_to_its_extent_is_placed_exactly(tmp_path):
    image_array, labels = phantom((5, 40, 36))
    image = make_image(image_array, direction=OBLIQUE)
    sitk.WriteImage(image, str(tmp_path / "img.nrrd"))
    volume = read_volume(tmp_path / "img.nrrd")
    # Crop the labels to a box, as Slicer does, with the origin moved to the box corner.
    box = (slice(1, 4), slice(8, 33), slice(6, 30))
    cropped = labels[box]
    corner_ijk = np.array([box[2].start, box[1].start, box[0].start], dtype=float)
    matrix = volume.grid.ijk_to_lps().copy()
    matrix[:3, 3] = matrix[:3, :3] @ corner_ijk + matrix[:3, 3]
    grid = Grid.from_ijk_to_lps(cropped.shape[::-1], matrix)
    write_segmentation(tmp_path / "crop.seg.nrrd", cropped, grid,
                       [ClassInfo(1, "ring", (1, 0, 0)), ClassInfo(2, "disc", (0, 0, 1))])
    placed, classes = read_annotation(tmp_path / "crop.seg.nrrd", volume)
    expected = np.zeros_like(labels)
    expected[box] = cropped
    np.testing.assert_array_equal(placed, expected)
    assert [c.name for c in classes] == ["ring", "disc"]


def test_label_map_on_another_grid_is_refused(tmp_path):
    image_array, labels = phantom()
    sitk.WriteImage(make_image(image_array), str(tmp_path / "img.nii.gz"))
    sitk.WriteImage(make_image(labels, spacing=(1.0, 1.0, 7.5)), str(tmp_path / "lbl.nii.gz"))
    with pytest.raises(InputError) as error:
        read_annotation(tmp_path / "lbl.nii.gz", read_volume(tmp_path / "img.nii.gz"))
    assert "lbl.nii.gz" in str(error.value) and "not on the grid" in str(error.value)
    assert "\n" not in str(error.value)


def _frames_agree(a, b) -> bool:
    return float(np.dot(a[0], b[0])) > 0.8 and float(np.dot(a[1], b[1])) > 0.8


def test_oblique_stacks_either_side_of_a_canonical_boundary_are_sliced_alike():
    """Slightly different obliquities must not give slices turned by 90 degrees or mirrored.

    Without a reference the nearest canonical axes jump at 45 degrees; sliced to match the first
    volume's in-plane frame, every acquisition within 20 degrees of it gives rows and columns
    pointing the same way, and the slices still map back exactly.
    """
    rng = np.random.default_rng(4)
    size, spacing = (24, 28, 9), (1.4, 1.4, 8.0)
    jumps = 0
    for _ in range(60):
        base = rotation(*rng.uniform(-np.pi, np.pi, size=3))
        tilted = base @ rotation(*rng.uniform(-0.2, 0.2, size=3))
        grid_a = Grid(size, spacing, (0.0, 0.0, 0.0), tuple(base.ravel()))
        grid_b = Grid(size, spacing, (5.0, -3.0, 2.0), tuple(tilted.ravel()))
        reference = in_plane_frame(slice_layout(grid_a), grid_a)
        jumps += not _frames_agree(in_plane_frame(slice_layout(grid_b), grid_b), reference)
        aligned = slice_layout(grid_b, reference)
        assert _frames_agree(in_plane_frame(aligned, grid_b), reference)
        assert aligned.slice_spacing == 8.0 and sorted(aligned.in_plane_spacing) == [1.4, 1.4]
        array = rng.random(size[::-1])
        stack = aligned.to_stack(array)
        assert stack.shape == aligned.native_shape
        np.testing.assert_array_equal(aligned.from_stack(stack), array)
    assert jumps > 0  # the canonical layout alone does jump for some of these pairs


def test_a_volume_oriented_like_the_reference_keeps_its_canonical_layout():
    grid = Grid((20, 30, 12), (1.25, 1.5, 6.0), (0.0, 0.0, 0.0), tuple(OBLIQUE.ravel()))
    layout = slice_layout(grid)
    assert slice_layout(grid, in_plane_frame(layout, grid)) == layout
