"""Where a segmentation is least certain, and how good each structure probably is (numpy only).

Per structure: the mean normalised entropy over its predicted voxels, and an estimated Dice from two
signals, each raised to ``AGREEMENT_POWER``, the higher one: its agreement with the predictions of
mirrored copies of the input (left-right, up-down and both, mirrored back; the median of their Dice
with the prediction), and the network's own confidence, the Dice its probabilities expect
(``expected_dice``). A model that errs on an image errs differently on its mirror images, so where
the copies disagree the prediction is usually poor; but a copy can fail wholesale on a mirrored image
whose original the network segments well, and there its confident probabilities are the better
witness. The power maps both, always higher than the true Dice, to the true Dice's scale
(docs/results/2026-12-03-review-estimates.md: the power and the combination chosen on the
unannotated training volumes of ACDC over three seeds, then measured on its validation split).
Neither signal sees a structure predicted whole in the wrong place (a small end-systolic cavity
called where another structure lies, on the image and its mirror images alike); its neighbours
do: where the classes a structure's outline borders share under ``NEIGHBOUR_FLOOR`` with those it
borders in the annotated slices of the model's training (``neighbour_shares``), the estimate is
scaled by that share (docs/results/2026-12-04-review-estimate-neighbours.md). Nor do they see a
structure the network leaves out of slices where it belongs (an end-systolic right ventricle found in
half of the heart's slices, alike on every copy); its slice coverage does: where the share of the
slices holding any structure (the heart's) a structure is found in falls under ``COVERAGE_TOLERANCE``
of its share in the model's annotated whole volumes (``slice_coverage``), the estimate is scaled by the
shortfall to ``COVERAGE_POWER`` (docs/results/2026-12-07-review-estimate-coverage.md).
Per slice along the engine's slicing axis: the
mean entropy over the voxels that matter for review (predicted foreground, or entropy above
``ENTROPY_FLOOR``) and each structure's mean entropy there. The summary's ``structures``, ``slices``
and the ``quality`` event are built here (docs/protocol.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..slicing import AXIS_NAMES

#: A background voxel counts for a slice's uncertainty when its entropy is above this.
ENTROPY_FLOOR = 0.1
#: The estimated Dice is the higher of the agreement with the mirrored copies and the expected Dice, each to
#: this power.
AGREEMENT_POWER = 3
DIGITS = 4
#: Below this overlap with the annotations' neighbours (``neighbour_overlap``) a structure is taken to be in the
#: wrong place and its estimate is scaled by the overlap; above it the neighbours say nothing (a basal slice's
#: open ring changes them by half without harm).
NEIGHBOUR_FLOOR = 0.1
#: A structure found in fewer of the slices holding any structure than this share of its annotated coverage has
#: its estimate scaled by (coverage / (tolerance x annotated coverage)) ** COVERAGE_POWER: a mild scaling (a
#: structure's extent varies between volumes and phases) that sends the structures left out of many slices down
#: the review table. Both chosen on the unannotated training volumes of ACDC (module docstring).
COVERAGE_TOLERANCE = 0.9
COVERAGE_POWER = 0.5

#: What the copies are, by their number (protocol.ESTIMATES): predictor.MIRRORS in that order.
COPIES_TEXT = {3: "three mirrored copies of the input (left-right, up-down, both; mirrored back)",
               1: "one mirrored copy of the input (left-right; mirrored back)"}


def quality_measure(copies: int = 3, neighbours: bool = True, coverage: bool = True) -> str:
    """summary.json's ``quality_measure``: how the estimates of a run with ``copies`` mirrored copies were made;
    ``neighbours``, ``coverage``: whether the model holds its annotations' neighbour shares and slice coverage
    (models before them do not; a model annotated on a few slices only holds no coverage)."""
    scaled = (f"scaled by the overlap of the classes its outline borders with those it borders in the model's "
              f"annotated slices where that overlap is under {NEIGHBOUR_FLOOR}; " if neighbours else "")
    if coverage:
        scaled += (f"scaled by (c / ({COVERAGE_TOLERANCE} x a)) ** {COVERAGE_POWER} where the share c of the slices "
                   f"holding any structure that hold it is under {COVERAGE_TOLERANCE} x its share a in the model's "
                   "annotated whole volumes; ")
    estimate = (f"estimated_dice: the higher of the median Dice of the structure's prediction with the predictions of "
                f"{COPIES_TEXT[copies]} and the Dice the network's probabilities expect, each to the power "
                f"{AGREEMENT_POWER}, {scaled}the power and the combination were chosen once on the unannotated "
                "training volumes of ACDC, no label of the volumes segmented here is used; "
                if copies else "estimated_dice: not computed (--estimate off), null; ")
    return (estimate + "uncertainty: mean normalised entropy over the structure's predicted voxels (1.0 when none); "
            f"a slice's uncertainty: mean entropy over its predicted foreground and its voxels of entropy above "
            f"{ENTROPY_FLOOR}; its uncertain voxels: their entropy summed, the order of the slices (most first)")


QUALITY_MEASURE = quality_measure()


@dataclass
class VolumeQuality:
    slice_axis: str
    structures: list[dict[str, Any]]  # worst first
    slices: list[dict[str, Any]]  # least certain first

    @property
    def worst_slice(self) -> int | None:
        return self.slices[0]["index"] if self.slices else None

    def estimates(self) -> dict[str, float | None]:
        return {s["name"]: s["estimated_dice"] for s in self.structures}


def agreement(labels: np.ndarray, copies: Sequence[np.ndarray], num_classes: int) -> np.ndarray:
    """Per class: the median Dice between ``labels`` and each of ``copies`` (the labels of mirrored copies of the
    input, mirrored back), over the copies where either holds the class; 1.0 where none does. The median: one
    copy that fails alone does not pull the agreement down."""
    flat = labels.reshape(-1).astype(np.int64)
    size = np.bincount(flat, minlength=num_classes)[:num_classes]
    dice = np.full((max(1, len(copies)), num_classes), np.nan)
    for row, copy in enumerate(copies):
        other = copy.reshape(-1).astype(np.int64)
        both = np.bincount(flat[flat == other], minlength=num_classes)[:num_classes]
        sizes = size + np.bincount(other, minlength=num_classes)[:num_classes]
        present = sizes > 0
        dice[row, present] = 2.0 * both[present] / sizes[present]
    counted = ~np.isnan(dice).all(axis=0)
    median = np.nanmedian(np.where(counted, dice, 1.0), axis=0)  # a column of NaN only where none is counted
    return np.where(counted, median, 1.0)


def expected_dice(labels: np.ndarray, probabilities: np.ndarray) -> np.ndarray:
    """Per class: the Dice the probabilities [S, C, ...] (the network's layout) expect of ``labels`` [S, ...]
    (class indices), were each voxel of class c with probability p_c: 2 * (the sum of p_c over the voxels
    labelled c) / (their count + the sum of p_c over all voxels); 0.0 where the class is predicted nowhere.
    Class by class on views of the probabilities: no copy of them is made."""
    num_classes = probabilities.shape[1]
    count = np.bincount(labels.reshape(-1).astype(np.int64), minlength=num_classes)[:num_classes]
    hits = np.array([probabilities[:, c][labels == c].sum(dtype=np.float64) for c in range(num_classes)])
    soft = np.array([probabilities[:, c].sum(dtype=np.float64) for c in range(num_classes)])
    return np.where(count > 0, 2.0 * hits / np.maximum(count + soft, 1e-9), 0.0)


def neighbour_counts(labels: np.ndarray, num_classes: int, slices: np.ndarray | None = None) -> np.ndarray:
    """[C, C] float: how many in-plane neighbouring pixel pairs (4-neighbourhood) of a stack [S, H, W] of class
    indices join class c to another class k, counted both ways; ``slices``: a bool mask [S] of the slices to
    count (None: all). Indices outside the classes (an ignore value) count nowhere."""
    stack = np.asarray(labels if slices is None else labels[np.asarray(slices, dtype=bool)])
    counts = np.zeros(num_classes * num_classes)
    for first, second in ((stack[:, :, :-1], stack[:, :, 1:]), (stack[:, :-1, :], stack[:, 1:, :])):
        joined = (first != second) & (first < num_classes) & (second < num_classes)
        # Widened only where two classes meet: the prediction's stack is not copied whole at 8 bytes a voxel.
        a, b = first[joined].astype(np.int64), second[joined].astype(np.int64)
        counts += np.bincount(a * num_classes + b, minlength=num_classes ** 2)
        counts += np.bincount(b * num_classes + a, minlength=num_classes ** 2)
    return counts.reshape(num_classes, num_classes)


def neighbour_shares(counts: np.ndarray) -> np.ndarray:
    """Each class's row of ``neighbour_counts`` as shares of its outline (0 where it has none)."""
    totals = counts.sum(axis=1, keepdims=True)
    return np.divide(counts, totals, out=np.zeros_like(counts, dtype=np.float64), where=totals > 0)


def annotated_neighbour_shares(stacks: Sequence[tuple[np.ndarray, np.ndarray | None]],
                               num_classes: int) -> tuple[tuple[float, ...], ...]:
    """ModelInfo.neighbour_shares of annotated stacks: (class indices [S, H, W], bool mask [S] of the annotated
    slices or None for all), their neighbour counts together."""
    counts = sum((neighbour_counts(labels, num_classes, mask) for labels, mask in stacks),
                 np.zeros((num_classes, num_classes)))
    return tuple(tuple(round(float(x), DIGITS) for x in row) for row in neighbour_shares(counts))


def neighbour_overlap(counts: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Per class: the overlap (sum of the smaller share, 0 to 1) of the classes its outline borders in
    ``counts`` (``neighbour_counts``) with those in ``reference`` (``neighbour_shares`` of the annotated
    slices); 1.0 where either has no outline."""
    shares = neighbour_shares(counts)
    overlap = np.minimum(shares, reference).sum(axis=1)
    has_outline = (counts.sum(axis=1) > 0) & (reference.sum(axis=1) > 0)
    return np.where(has_outline, overlap, 1.0)


def slice_coverage(labels: np.ndarray, num_classes: int, slice_axis: int = 0) -> np.ndarray:
    """Per class (background first, 1.0): the share of the slices from the first to the last holding any
    structure (``labels``: class indices, sliced along ``slice_axis``) that hold it; 0.0 for every structure
    where none is found."""
    per_slice = np.moveaxis(np.asarray(labels), slice_axis, 0).reshape(labels.shape[slice_axis], -1)
    # Slice by slice: one slice's counts at a time, never the stack widened to 8 bytes a voxel.
    present = np.array([np.bincount(row, minlength=num_classes)[:num_classes] > 0 for row in per_slice],
                       dtype=bool).reshape(-1, num_classes)  # an ignore value (>= num_classes) counts nowhere
    found = np.flatnonzero(present[:, 1:].any(axis=1))
    coverage = np.zeros(num_classes)
    if len(found):
        coverage[1:] = present[found[0]:found[-1] + 1, 1:].mean(axis=0)
    coverage[0] = 1.0
    return coverage


def annotated_slice_coverage(stacks: Sequence[tuple[np.ndarray, np.ndarray | None]],
                             num_classes: int) -> tuple[float, ...] | None:
    """ModelInfo.slice_coverage of annotated stacks (class indices [S, H, W], bool mask [S] of the annotated
    slices or None for all): the mean ``slice_coverage`` of those annotated on every slice and holding a
    structure; None where none is (a structure's extent is not seen on a few slices)."""
    whole = [slice_coverage(np.asarray(labels), num_classes) for labels, mask in stacks
             if mask is None or bool(np.asarray(mask).all())]
    found = [coverage for coverage in whole if coverage[1:].any()]
    if not found:
        return None
    return tuple(round(float(x), DIGITS) for x in np.mean(found, axis=0))


def estimated_dice(agreement: float, expected: float | None, overlap: float | None = None,
                   coverage: float | None = None, annotated_coverage: float | None = None) -> float:
    """A structure's estimated Dice from its agreement with the mirrored copies and, where given, its expected
    Dice, its neighbours' overlap with the annotations' and its slice coverage against the annotations'
    (module docstring)."""
    higher = max(agreement, expected) if expected is not None else agreement
    value = float(np.clip(higher, 0, 1)) ** AGREEMENT_POWER
    if overlap is not None and overlap < NEIGHBOUR_FLOOR:
        value *= max(0.0, float(overlap))
    if coverage is not None and annotated_coverage:
        value *= min(1.0, max(0.0, float(coverage)) / (COVERAGE_TOLERANCE * annotated_coverage)) ** COVERAGE_POWER
    return round(value, DIGITS)


def volume_quality(labels: np.ndarray, uncertainty: np.ndarray, agreements: Sequence[float] | None,
                   slice_axis: int, names: Sequence[str], values: Sequence[int],
                   expected: Sequence[float] | None = None,
                   overlaps: Sequence[float] | None = None,
                   annotated_coverage: Sequence[float] | None = None) -> VolumeQuality:
    """``labels``: class indices [k, j, i] (0 background, c for ``names[c - 1]``); ``uncertainty``: normalised
    entropy; ``agreements``: each class's agreement with the mirrored copies (background first, ``agreement``;
    None: no estimate, every estimated_dice None); ``expected``: each class's expected Dice (``expected_dice``;
    None: the agreement alone); ``overlaps``: each class's ``neighbour_overlap`` (None: not used);
    ``annotated_coverage``: each class's ``slice_coverage`` in the model's annotations (None: not used);
    ``slice_axis``: the array axis of [k, j, i] the engine slices along."""
    n_classes = len(names) + 1
    coverage = (slice_coverage(labels, n_classes, slice_axis)
                if annotated_coverage is not None and agreements is not None else None)
    flat = labels.reshape(-1).astype(np.int64)
    counts = np.bincount(flat, minlength=n_classes)[:n_classes]
    entropy_sums = np.bincount(flat, weights=uncertainty.reshape(-1), minlength=n_classes)[:n_classes]
    structures = []
    for c, (name, value) in enumerate(zip(names, values), 1):
        estimate = (estimated_dice(agreements[c], None if expected is None else expected[c],
                                   None if overlaps is None else overlaps[c],
                                   None if coverage is None else coverage[c],
                                   None if annotated_coverage is None else annotated_coverage[c])
                    if counts[c] and agreements is not None else None)
        mean_entropy = float(entropy_sums[c] / counts[c]) if counts[c] else 1.0
        structures.append({"name": name, "value": int(value), "estimated_dice": estimate,
                           "uncertainty": round(mean_entropy, DIGITS)})
    # Worst first: the lowest estimate; without estimates (--estimate off), the highest uncertainty.
    structures.sort(key=lambda s: (s["estimated_dice"] is None, s["estimated_dice"] or 0.0, -s["uncertainty"]))
    return VolumeQuality(AXIS_NAMES[slice_axis], structures,
                         slice_uncertainties(labels, uncertainty, slice_axis, names))


def slice_uncertainties(labels: np.ndarray, uncertainty: np.ndarray, slice_axis: int,
                        names: Sequence[str]) -> list[dict[str, Any]]:
    """One item per slice along ``slice_axis`` with predicted foreground or entropy above the floor, least
    certain first: its index, uncertainty, its uncertain voxels (the sum of their entropy: about how many
    voxels are wrong), the structure of highest mean entropy there and every one's. Least certain is most
    uncertain voxels: the slice where a correction fixes most; the mean would put a sliver of structure at
    an apex first. On 10 corrected slices they also taught a retrain more than slices chosen by the mean
    (docs/results/2026-12-05-review-spread.md)."""
    n_classes = len(names) + 1
    stack_labels = np.moveaxis(labels, slice_axis, 0).reshape(labels.shape[slice_axis], -1)
    stack_entropy = np.moveaxis(uncertainty, slice_axis, 0).reshape(labels.shape[slice_axis], -1)
    n_slices = stack_labels.shape[0]
    counted = (stack_labels > 0) | (stack_entropy > ENTROPY_FLOOR)
    count = counted.sum(axis=1)
    total = np.where(counted, stack_entropy, 0.0).sum(axis=1, dtype=np.float64)
    # Per slice and class: bincount over slice * classes + class.
    keys = (np.arange(n_slices)[:, None] * n_classes + stack_labels).reshape(-1).astype(np.int64)
    size = n_slices * n_classes
    class_counts = np.bincount(keys, minlength=size)[:size].reshape(n_slices, n_classes)
    class_sums = np.bincount(keys, weights=stack_entropy.reshape(-1).astype(np.float64),
                             minlength=size)[:size].reshape(n_slices, n_classes)
    items = []
    for s in np.flatnonzero(count):
        per = {names[c - 1]: round(float(class_sums[s, c] / class_counts[s, c]), DIGITS)
               for c in range(1, n_classes) if class_counts[s, c]}
        worst = max(per, key=lambda n: per[n]) if per else None
        items.append({"index": int(s), "uncertainty": round(float(total[s] / count[s]), DIGITS),
                      "uncertain_voxels": round(float(total[s]), 1), "structure": worst, "structures": per})
    items.sort(key=lambda item: (-item["uncertain_voxels"], -item["uncertainty"], item["index"]))
    return items
