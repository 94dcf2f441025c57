"""The stack-ends study (lab) finds a structure segmented in slices beyond the reference's, at the right end."""

from __future__ import annotations

import numpy as np
import pytest

from PLCLSegmentationLib.engine import slicing
from PLCLSegmentationLib.engine.files.dataset import read_dataset
from PLCLSegmentationLib.engine.files.volumes import (
    ClassInfo,
    read_annotation,
    read_volume,
    write_image,
    write_segmentation,
)
from PLCLSegmentationLib.engine.lab.stack_ends import beyond_reference, main, markdown, study
from PLCLSegmentationLib.engine.lab.synthetic import LABELS, RV

CLASSES = [ClassInfo(value, name, (1.0, 0.0, 0.0)) for value, name in LABELS.items() if value > 0]


def test_beyond_reference_counts_each_end_along_the_slice_axis():
    reference = np.zeros((6, 4, 5), bool)
    reference[:, 1:3, 2:4] = True  # held on array axis 2's indices 2 and 3
    predicted = np.zeros_like(reference)
    predicted[0, 0, 0] = predicted[2, 1, 1] = predicted[3, 2, 4] = predicted[4, 0, 4] = True
    mask, low, high = beyond_reference(predicted, reference, slice_axis=2)
    assert (low, high) == (2, 2) and mask.sum() == 4
    mask, low, high = beyond_reference(predicted, np.zeros_like(reference), slice_axis=0)
    assert (low, high) == (4, 0) and mask.sum() == 4


def _predict_folder(data, folder, extra_value: float = 0.7) -> dict[str, int]:
    """The reference itself as each val case's prediction, plus the right ventricle in one slice before
    its first (or after its last); returns the voxels added per case, negative where added at the high end."""
    dataset = read_dataset(data)
    added = {}
    for sub in ("predictions", "uncertainty"):
        (folder / sub).mkdir(exist_ok=True)
    for case in dataset.split("val"):
        volume = read_volume(dataset.image(case))
        labels, _ = read_annotation(dataset.label(case), volume)
        axis = slicing.canonical(volume.grid.direction_matrix, volume.grid.spacing).slice_axis
        held = np.flatnonzero((labels == RV).any(axis=tuple(a for a in range(3) if a != axis)))
        target = held[0] - 1 if held[0] > 0 else held[-1] + 1
        assert 0 <= target < labels.shape[axis]
        predicted = labels.copy()
        index = [slice(None)] * 3
        index[axis] = target
        plane = predicted[tuple(index)]
        plane[plane == 0] = RV
        extra = predicted != labels
        added[case] = int(extra.sum()) * (1 if target < held[0] else -1)
        write_segmentation(folder / "predictions" / f"{case}.seg.nrrd", predicted, volume.grid, CLASSES)
        write_image(folder / "uncertainty" / f"{case}.nrrd", np.where(extra, extra_value, 0.1).astype(np.float32),
                    volume.grid)
    return added


def test_the_study_finds_what_was_added_beyond_the_reference(synthetic, tmp_path):
    added = _predict_folder(synthetic, tmp_path)
    found = study(tmp_path, str(synthetic), "val")
    for case, count in added.items():
        tally = found[case.rsplit("_", 1)[-1]][LABELS[RV]]
        assert tally.dice_within == [pytest.approx(1.0)] and tally.dice[0] < 1.0
        assert (tally.beyond_low, tally.beyond_high) == (([count], [0]) if count > 0 else ([0], [-count]))
        assert np.mean(tally.uncertainty_beyond) == pytest.approx(0.7)
        assert np.mean(tally.uncertainty_within) == pytest.approx(0.1)
        other = found[case.rsplit("_", 1)[-1]][LABELS[2]]
        assert other.dice == [pytest.approx(1.0)] and other.beyond_low == [0] and other.beyond_high == [0]
    assert markdown({"run": found}).count("| run |") == len(found) * len(CLASSES)


def test_a_prediction_of_other_structures_is_refused_naming_the_file(synthetic, tmp_path, capsys):
    _predict_folder(synthetic, tmp_path)
    dataset = read_dataset(synthetic)
    case = dataset.split("val")[0]
    volume = read_volume(dataset.image(case))
    write_segmentation(tmp_path / "predictions" / f"{case}.seg.nrrd", np.zeros(volume.array.shape, np.uint8),
                       volume.grid, [ClassInfo(1, "liver", (0.0, 1.0, 0.0))])
    assert main([str(tmp_path), "--data", str(synthetic), "--split", "val"]) == 1
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and f"{case}.seg.nrrd" in error and "liver" in error


def test_a_folder_without_predictions_of_the_split_is_refused(synthetic, tmp_path, capsys):
    assert main([str(tmp_path), "--data", str(synthetic), "--split", "val"]) == 1
    assert str(tmp_path) in capsys.readouterr().err
