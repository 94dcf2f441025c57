"""The clean-up of a segmentation to its largest connected pieces, where the annotations say a structure is one.

A model segments each slice on its own, so a prediction can hold pieces far from the organ: a bright
bowel loop below the heart called left ventricle, say. Keeping the largest 3D piece of each structure
removes small pieces, but where the stray piece is larger than the true structure (a small end-systolic
cavity) it keeps the stray piece and drops the structure. Keeping first the largest piece of all
structures together (the organ) removes what lies apart from the organ, whatever its size, and the
structures' own pieces are judged inside it.

Which of these hold is read from the user's annotations, not assumed: a structure (or all of them
together) counts as one object where, in every annotated volume, its largest piece holds at least
ONE_OBJECT_SHARE of its voxels; in 3D for whole annotated volumes, slice by slice where only some
slices are annotated. Annotators' small stray pieces pass (the right ventricle of ACDC's labels: its
largest piece holds 0.83 or more of it); a class of several objects of a size (two kidneys, lesions)
does not, and is left as predicted.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

#: The share of a structure's voxels its largest piece holds, in every annotated volume, for it to count
#: as one object.
ONE_OBJECT_SHARE = 0.75


def connected_pieces(mask: np.ndarray) -> np.ndarray:
    """The connected pieces of a boolean mask (face neighbours), numbered from the largest (1)."""
    import SimpleITK as sitk  # not needed to import the engine

    image = sitk.GetImageFromArray(mask.astype(np.uint8))
    return sitk.GetArrayFromImage(sitk.RelabelComponent(sitk.ConnectedComponent(image), sortByObjectSize=True))


def largest_share(mask: np.ndarray) -> float | None:
    """The share of a mask's voxels in its largest connected piece; None where it is empty."""
    total = int(mask.sum())
    return None if total == 0 else int((connected_pieces(mask) == 1).sum()) / total


def single_objects(stacks: Sequence[tuple[np.ndarray, np.ndarray | None]], num_classes: int) -> tuple[bool, ...]:
    """Which structures the annotations show as one object: index 0 all structures together, index c class c.
    ``stacks``: each annotated volume's class indices [S, H, W] (values from ``num_classes`` up unlabelled) and
    its bool mask [S] of the annotated slices (None: every slice, judged in 3D; else each annotated slice in 2D).
    A structure no annotation holds counts as one (nothing says otherwise)."""
    one = [True] * num_classes
    for labels, annotated in stacks:
        pieces = [labels] if annotated is None else [labels[i:i + 1] for i in np.flatnonzero(annotated)]
        for piece in pieces:
            foreground = (piece > 0) & (piece < num_classes)
            for index in range(num_classes):
                mask = foreground if index == 0 else piece == index
                share = largest_share(mask)
                if share is not None and share < ONE_OBJECT_SHARE:
                    one[index] = False
    return tuple(one)


def legacy_objects(num_classes: int) -> tuple[bool, ...]:
    """What model files from before ``single_objects`` clean up: each class's largest piece, not the whole."""
    return (False,) + (True,) * (num_classes - 1)


def keep_largest_components(labels: np.ndarray, objects: Sequence[bool]) -> np.ndarray:
    """``labels`` (class indices) with the voxels outside the largest connected piece of each structure that
    ``objects`` marks (single_objects' order: all structures together first) set to background."""
    out = labels.copy()
    if objects[0]:
        out[(connected_pieces(out > 0) != 1) & (out > 0)] = 0
    for index in range(1, len(objects)):
        if objects[index]:
            mask = out == index
            if mask.any():
                out[mask & (connected_pieces(mask) != 1)] = 0
    return out
