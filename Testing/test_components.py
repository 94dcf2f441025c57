"""The clean-up to the largest pieces: which structures count as one object is read from the annotations,
and a stray piece larger than the true structure no longer replaces it."""

from __future__ import annotations

import dataclasses

import numpy as np

from PLCLSegmentationLib.engine.method.components import (
    ONE_OBJECT_SHARE,
    connected_pieces,
    keep_largest_components,
    largest_share,
    legacy_objects,
    organ_piece,
    single_objects,
)
from PLCLSegmentationLib.engine.method.quality import neighbour_counts, neighbour_shares


def _heart(depth: int = 8) -> np.ndarray:
    """Class 2 a wall around a small class 3 cavity, class 1 beside the wall, slice by slice."""
    labels = np.zeros((depth, 40, 40), np.uint8)
    labels[1:6, 10:20, 10:20] = 2
    labels[1:6, 14:16, 14:16] = 3
    labels[1:6, 10:20, 20:26] = 1
    return labels


def test_a_stray_piece_larger_than_the_true_structure_goes_once_the_whole_is_kept():
    labels = _heart()
    labels[6:8, 30:38, 30:38] = 3  # apart from the organ, larger than the cavity (128 against 20 voxels)
    legacy = keep_largest_components(labels, legacy_objects(4))
    assert (legacy == 3).sum() == 128 and not (legacy[1:6] == 3).any()  # the old clean-up kept the stray piece
    kept = keep_largest_components(labels, (True, True, True, True))
    np.testing.assert_array_equal(kept, _heart())
    assert (labels[6:8, 30:38, 30:38] == 3).all()  # the input is not changed


def test_structures_not_marked_keep_every_piece_and_the_rest_lose_their_islands():
    labels = _heart()
    labels[0, 0:2, 0:2] = 1  # an island of class 1, apart from everything
    labels[3, 12, 30] = 2  # an island of class 2 apart from the organ
    kept = keep_largest_components(labels, (False, False, True, True))
    assert kept[0, 0, 0] == 1 and kept[3, 12, 30] == 0
    kept = keep_largest_components(labels, (False, False, False, False))
    np.testing.assert_array_equal(kept, labels)


def test_the_annotations_say_which_structures_are_one_object():
    heart = _heart()
    assert single_objects([(heart, None)], 4) == (True, True, True, True)
    two = heart.copy()
    two[1:6, 28:38, 0:10] = 1  # a second class-1 object larger than the first: two kidneys, say
    assert single_objects([(heart, None), (two, None)], 4) == (False, False, True, True)
    small = heart.copy()
    small[1, 30:32, 2:4] = 1  # a stray piece an annotator left: 4 of 154 voxels
    assert largest_share(small == 1) > ONE_OBJECT_SHARE
    assert single_objects([(small, None)], 4) == (True, True, True, True)
    assert single_objects([(np.zeros((3, 8, 8), np.uint8), None)], 4) == (True,) * 4  # nothing says otherwise


def test_partly_annotated_volumes_are_judged_on_their_annotated_slices_in_2d():
    labels = _heart()
    labels[3, 26:38, 0:10] = 1  # a second class-1 piece, the larger, on slice 3 alone
    labels[4, 12, 12] = 255  # an unlabelled value is not a structure
    annotated = np.zeros(len(labels), bool)
    annotated[[2, 4]] = True
    assert single_objects([(labels, annotated)], 4) == (True, True, True, True)
    annotated[3] = True
    assert single_objects([(labels, annotated)], 4) == (False, False, True, True)
    # In 3D the ring's slices join; slice by slice a ring cut in two halves is two pieces.
    ring = np.zeros((3, 20, 20), np.uint8)
    ring[:, 5:15, 5:7] = 2
    ring[:, 5:15, 13:15] = 2
    ring[1, 5:7, 5:15] = 2
    assert single_objects([(ring, None)], 3)[2] and not single_objects([(ring, np.array([True, False, False]))], 3)[2]


def _organ(labels: np.ndarray, top: int, left: int, slices: slice) -> None:
    """A wall (2) around a cavity (3), a chamber (1) beside the wall: 64 + 36 + 40 voxels a slice."""
    labels[slices, top:top + 10, left:left + 10] = 2
    labels[slices, top + 2:top + 8, left + 2:left + 8] = 3
    labels[slices, top:top + 10, left + 10:left + 14] = 1


def _organ_and_stray() -> tuple[np.ndarray, np.ndarray]:
    """The annotations' neighbour shares of an organ, and a prediction of the organ in half its slices (420
    voxels) beside a larger stray piece apart from it (648 voxels) whose structures lie side by side."""
    annotated = np.zeros((6, 40, 60), np.uint8)
    _organ(annotated, 5, 5, slice(0, 6))
    labels = np.zeros((6, 40, 60), np.uint8)
    _organ(labels, 5, 5, slice(0, 3))
    labels[3:6, 25:37, 30:44] = 1
    labels[3:6, 25:37, 44:48] = 3
    return neighbour_shares(neighbour_counts(annotated, 4)), labels


def test_the_organ_is_the_piece_whose_structures_border_as_annotated_not_a_larger_stray_one():
    shares, labels = _organ_and_stray()
    assert keep_largest_components(labels, (True,) * 4)[0].max() == 0  # size alone keeps the stray piece
    kept = keep_largest_components(labels, (True,) * 4, shares)
    np.testing.assert_array_equal(kept[:3], labels[:3])
    assert not kept[3:].any() and (labels[3:6, 25:37, 44:48] == 3).all()  # the input is not changed
    # The same volume with its slices along the last axis: the planes across it are scored.
    moved = np.moveaxis(labels, 0, 2)
    np.testing.assert_array_equal(keep_largest_components(moved, (True,) * 4, shares, slice_axis=2),
                                  np.moveaxis(kept, 0, 2))
    labels[3:6, 25:37, 30:48] = 0  # without the stray piece the organ is kept whole
    np.testing.assert_array_equal(keep_largest_components(labels, (True,) * 4, shares), labels)


def test_a_piece_too_small_to_win_is_not_scored_and_a_well_shaped_larger_one_still_wins():
    shares, labels = _organ_and_stray()
    pieces = connected_pieces(labels > 0)
    assert organ_piece(pieces, labels, shares) == 2  # the organ, second by size
    organ = labels.copy()
    organ[3:6] = 0
    _organ(organ, 25, 30, slice(0, 6))  # a second organ, whole, larger (840 voxels) and as well shaped
    pieces = connected_pieces(organ > 0)
    assert organ_piece(pieces, organ, shares) == 1
    speck = organ.copy()
    speck[:3] = 0
    speck[0, 0, 0] = 3  # one voxel: its agreement (1.0, no outline scored) cannot outweigh the organ's size
    assert organ_piece(connected_pieces(speck > 0), speck, shares) == 1


def test_the_predictor_cleans_up_by_the_agreement_its_model_file_holds():
    import torch

    from PLCLSegmentationLib.engine.files.volumes import ClassInfo
    from PLCLSegmentationLib.engine.method.modelfile import ModelInfo
    from PLCLSegmentationLib.engine.method.predictor import Predictor

    shares, labels = _organ_and_stray()
    info = ModelInfo(classes=[ClassInfo(v, f"class {v}", (1.0, 0.0, 0.0)) for v in (1, 2, 3)], target_spacing_mm=1.2,
                     patch_size=32, base_channels=4, levels=3, embedding_dim=4, intensity_percentiles=(1.0, 99.0),
                     inference_tile=32, largest_component=True, single_objects=(True,) * 4,
                     neighbour_shares=tuple(tuple(float(x) for x in row) for row in shares))
    predictor = Predictor(info.build_network(), info, torch.device("cpu"), precision="fp32")
    kept = predictor.clean_up(np.moveaxis(labels, 0, 1), slice_axis=1)
    assert np.moveaxis(kept, 1, 0)[:3].any() and not np.moveaxis(kept, 1, 0)[3:].any()
    without = Predictor(info.build_network(), dataclasses.replace(info, neighbour_shares=None), torch.device("cpu"))
    assert not without.clean_up(labels)[:3].any()  # a model file without shares keeps the largest piece
