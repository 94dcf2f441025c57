"""The clean-up to the largest pieces: which structures count as one object is read from the annotations,
and a stray piece larger than the true structure no longer replaces it."""

from __future__ import annotations

import numpy as np

from PLCLSegmentationLib.engine.method.components import (
    ONE_OBJECT_SHARE,
    keep_largest_components,
    largest_share,
    legacy_objects,
    single_objects,
)


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
