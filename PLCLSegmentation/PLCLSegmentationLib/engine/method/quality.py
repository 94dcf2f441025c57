"""Where a segmentation is least certain, and how good each structure probably is (numpy only).

Per structure: the mean normalised entropy over its predicted voxels, and an estimated Dice, the
Dice the prediction would have if the truth were drawn voxel by voxel from the softmax
probabilities (expected soft Dice: 2 sum_{x in P} p_c(x) / (|P| + sum_x p_c(x))), mapped through the
model's calibration (identity where the model file has none). Per slice along the engine's slicing
axis: the mean entropy over the voxels that matter for review (predicted foreground, or entropy
above ``ENTROPY_FLOOR``) and each structure's mean entropy there. The summary's ``structures``,
``slices`` and the ``quality`` event are built here (docs/protocol.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

#: A background voxel counts for a slice's uncertainty when its entropy is above this.
ENTROPY_FLOOR = 0.1
#: Slice axis names by the array axis of [k, j, i].
AXIS_NAMES = ("k", "j", "i")
DIGITS = 4

QUALITY_MEASURE = (
    "estimated_dice: the expected Dice of each structure if the truth were drawn voxel by voxel from the "
    "softmax probabilities, 2 sum_P p / (|P| + sum p) over the predicted voxels P, mapped through the model "
    "file's quality calibration (a monotone piecewise-linear map; identity where the file has none); "
    "uncertainty: mean normalised entropy over the structure's predicted voxels (1.0 when none); a slice's "
    f"uncertainty: mean entropy over its predicted foreground and its voxels of entropy above {ENTROPY_FLOOR}")


@dataclass(frozen=True)
class Calibration:
    """A monotone piecewise-linear map of raw estimates to calibrated ones (knots sorted by raw value)."""

    raw: tuple[float, ...] = (0.0, 1.0)
    calibrated: tuple[float, ...] = (0.0, 1.0)

    def __call__(self, value: float) -> float:
        return float(np.clip(np.interp(value, self.raw, self.calibrated), 0.0, 1.0))

    @property
    def is_identity(self) -> bool:
        return self.raw == (0.0, 1.0) and self.calibrated == (0.0, 1.0)

    def to_dict(self) -> dict[str, list[float]]:
        return {"raw": [float(x) for x in self.raw], "calibrated": [float(x) for x in self.calibrated]}

    @classmethod
    def from_dict(cls, d: Any) -> Calibration:
        """From a model file's ``quality_calibration``; None (older files) is the identity."""
        if d is None:
            return cls()
        if not isinstance(d, dict):
            raise ValueError(f"quality_calibration {d!r}: {{'raw': [...], 'calibrated': [...]}} expected")
        raw, calibrated = d.get("raw"), d.get("calibrated")
        numbers = [raw, calibrated]
        if not all(isinstance(v, list) and v and all(isinstance(x, (int, float)) and not isinstance(x, bool)
                                                       and np.isfinite(x) for x in v) for v in numbers):
            raise ValueError(f"quality_calibration {d!r}: two lists of finite numbers expected")
        if len(raw) != len(calibrated) or len(raw) < 2:
            raise ValueError(f"quality_calibration {d!r}: as many raw as calibrated values, at least 2")
        if any(b <= a for a, b in zip(raw, raw[1:])) or any(b < a for a, b in zip(calibrated, calibrated[1:])):
            raise ValueError(f"quality_calibration {d!r}: raw values must increase and calibrated ones not decrease")
        return cls(tuple(float(x) for x in raw), tuple(float(x) for x in calibrated))


#: Knots of a fitted calibration: at most this many, at quantiles of the raw estimates.
CALIBRATION_KNOTS = 8


def fit_calibration(raw: Sequence[float], true: Sequence[float], knots: int = CALIBRATION_KNOTS) -> Calibration:
    """The monotone map of raw estimates to true Dice that fits the pairs best in squared error (isotonic
    regression, pool adjacent violators), as at most ``knots`` knots at quantiles of ``raw``; below the pairs
    it falls to (0, 0), above them it stays level. Fewer than 3 pairs: the identity."""
    raw_values, true_values = np.asarray(raw, dtype=np.float64), np.asarray(true, dtype=np.float64)
    if raw_values.size < 3:
        return Calibration()
    order = np.argsort(raw_values, -1, "stable")  # ties keep their order
    x, y = raw_values[order], true_values[order]
    # Pool adjacent violators: blocks of (sum, count), merged while their means decrease.
    sums: list[float] = []
    counts: list[int] = []
    for value in y:
        sums.append(float(value))
        counts.append(1)
        while len(sums) > 1 and sums[-2] / counts[-2] > sums[-1] / counts[-1]:
            last_sum, last_count = sums.pop(), counts.pop()
            sums[-1] += last_sum
            counts[-1] += last_count
    fitted = np.repeat([s / c for s, c in zip(sums, counts)], counts)
    quantiles = np.unique(np.quantile(x, np.linspace(0, 1, knots)))
    at = [float(np.mean(fitted[np.abs(x - q) == np.abs(x - q).min()])) for q in quantiles]
    knots_raw, knots_calibrated = list(quantiles), list(np.maximum.accumulate(at))
    if knots_raw[0] > 0:
        knots_raw, knots_calibrated = [0.0, *knots_raw], [0.0, *knots_calibrated]
    if knots_raw[-1] < 1:
        knots_raw, knots_calibrated = [*knots_raw, 1.0], [*knots_calibrated, knots_calibrated[-1]]
    return Calibration(tuple(float(v) for v in knots_raw), tuple(float(np.clip(v, 0, 1)) for v in knots_calibrated))


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


def expected_dice(hits: np.ndarray, counts: np.ndarray, soft: np.ndarray) -> np.ndarray:
    """Expected soft Dice per class: 2 hits / (counts + soft); NaN where a class is predicted nowhere."""
    hits, counts, soft = (np.asarray(a, dtype=np.float64) for a in (hits, counts, soft))
    out = np.full(hits.shape, np.nan)
    present = counts > 0
    out[present] = 2.0 * hits[present] / (counts[present] + soft[present])
    return np.clip(out, 0.0, 1.0)


def volume_quality(labels: np.ndarray, uncertainty: np.ndarray, confidence: np.ndarray, soft: Sequence[float],
                   slice_axis: int, names: Sequence[str], values: Sequence[int],
                   calibration: Calibration | None = None) -> VolumeQuality:
    """``labels``: class indices [k, j, i] (0 background, c for ``names[c - 1]``); ``uncertainty``: normalised
    entropy; ``confidence``: the softmax probability of each voxel's predicted class; ``soft``: the sum over
    all voxels of each class's probability, background first; ``slice_axis``: the array axis of [k, j, i]
    the engine slices along."""
    calibration = calibration or Calibration()
    n_classes = len(names) + 1
    flat = labels.reshape(-1).astype(np.int64)
    counts = np.bincount(flat, minlength=n_classes)[:n_classes]
    hits = np.bincount(flat, weights=confidence.reshape(-1), minlength=n_classes)[:n_classes]
    entropy_sums = np.bincount(flat, weights=uncertainty.reshape(-1), minlength=n_classes)[:n_classes]
    raw = expected_dice(hits, counts, np.asarray(soft, dtype=np.float64)[:n_classes])
    structures = []
    for c, (name, value) in enumerate(zip(names, values), 1):
        estimate = None if np.isnan(raw[c]) else round(calibration(float(raw[c])), DIGITS)
        mean_entropy = float(entropy_sums[c] / counts[c]) if counts[c] else 1.0
        structures.append({"name": name, "value": int(value), "estimated_dice": estimate,
                           "uncertainty": round(mean_entropy, DIGITS)})
    structures.sort(key=lambda s: (s["estimated_dice"] is None, s["estimated_dice"] or 0.0))
    return VolumeQuality(AXIS_NAMES[slice_axis], structures,
                         slice_uncertainties(labels, uncertainty, slice_axis, names))


def slice_uncertainties(labels: np.ndarray, uncertainty: np.ndarray, slice_axis: int,
                        names: Sequence[str]) -> list[dict[str, Any]]:
    """One item per slice along ``slice_axis`` with predicted foreground or entropy above the floor, least
    certain first: its index, uncertainty, the structure of highest mean entropy there and every one's."""
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
                      "structure": worst, "structures": per})
    items.sort(key=lambda item: (-item["uncertainty"], item["index"]))
    return items
