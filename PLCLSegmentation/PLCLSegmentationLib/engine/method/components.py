"""The clean-up of a segmentation to its largest connected pieces, where the annotations say a structure is one.

A model segments each slice on its own, so a prediction can hold pieces far from the organ: a bright
bowel loop below the heart called left ventricle, say. Keeping the largest 3D piece of each structure
removes small pieces, but where the stray piece is larger than the true structure (a small end-systolic
cavity) it keeps the stray piece and drops the structure. Keeping first the largest piece of all
structures together (the organ) removes what lies apart from the organ, whatever its size, and the
structures' own pieces are judged inside it.

Where two pieces of the organ's size remain, size alone can still keep the wrong one (a stray piece below a
small end-systolic heart, larger than the part of the heart the model found). Where the model file holds
what each structure borders in the annotations (quality.neighbour_shares), the organ is the piece of the
most voxels x agreement ** ORGAN_AGREEMENT_POWER: how well its structures border each other as annotated (a heart's
cavity inside its muscle beside the other ventricle) weighs against size, so a stray piece wins only where
it is both large and shaped like the annotated organ.

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

from .quality import neighbour_counts, neighbour_overlap

#: The share of a structure's voxels its largest piece holds, in every annotated volume, for it to count
#: as one object.
ONE_OBJECT_SHARE = 0.75
#: How strongly a piece's agreement with the annotations' neighbours weighs against its size when the organ's
#: piece is chosen (squared: a piece of agreement 0.5 counts as a quarter of its voxels).
ORGAN_AGREEMENT_POWER = 2
#: At most this many of the largest pieces are scored (a speck cannot outscore the organ anyway).
ORGAN_PIECES_SCORED = 8


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


def piece_agreement(labels: np.ndarray, shares: np.ndarray) -> float:
    """How well the structures of one piece (class indices [S, H, W], 0 outside it) border each other as in the
    annotations: quality.neighbour_overlap of each structure, weighted by its voxels."""
    num_classes = len(shares)
    overlap = neighbour_overlap(neighbour_counts(labels, num_classes), shares)
    voxels = np.bincount(labels.ravel(), minlength=num_classes)[:num_classes]
    return float((overlap[1:] * voxels[1:]).sum() / max(1, voxels[1:].sum()))


def organ_piece(pieces: np.ndarray, labels: np.ndarray, shares: np.ndarray, slice_axis: int = 0) -> int:
    """The number of the piece (``connected_pieces``' numbering) of the most voxels x agreement ** ORGAN_AGREEMENT_POWER
    (``piece_agreement`` in the planes across ``slice_axis``). A piece is scored only where its size could beat
    the best so far at full agreement, so a prediction of one piece and specks costs one score, of one piece none."""
    sizes = np.bincount(pieces.ravel())[1:ORGAN_PIECES_SCORED + 1]
    if len(sizes) < 2:
        return 1
    best, best_score = 1, -1.0
    for number, size in enumerate(sizes, 1):
        if size <= best_score:  # sizes fall: no later piece can win either
            break
        inside = pieces == number
        box = tuple(slice(int(i.min()), int(i.max()) + 1) for i in np.nonzero(inside))
        piece = np.moveaxis(np.where(inside[box], labels[box], 0), slice_axis, 0)
        score = size * piece_agreement(piece, shares) ** ORGAN_AGREEMENT_POWER
        if score > best_score:
            best, best_score = number, score
    return best


def keep_largest_components(labels: np.ndarray, objects: Sequence[bool], shares: np.ndarray | None = None,
                            slice_axis: int = 0) -> np.ndarray:
    """``labels`` (class indices) with the voxels outside the largest connected piece of each structure that
    ``objects`` marks (single_objects' order: all structures together first) set to background. ``shares``: what
    each structure borders in the annotations (ModelInfo.neighbour_shares); where given, all structures together
    keep the organ's piece by size and agreement (``organ_piece``; ``slice_axis``: the stack's) not by size."""
    out = labels.copy()
    if objects[0]:
        pieces = connected_pieces(out > 0)
        keep = 1 if shares is None else organ_piece(pieces, out, np.asarray(shares), slice_axis)
        out[(pieces != keep) & (out > 0)] = 0
    for index in range(1, len(objects)):
        if objects[index]:
            mask = out == index
            if mask.any():
                out[mask & (connected_pieces(mask) != 1)] = 0
    return out
