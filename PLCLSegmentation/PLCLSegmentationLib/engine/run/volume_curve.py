"""Volume of each class over the frames of a sequence (ml), and its extremes and ejection fraction.

numpy only (no torch, no SimpleITK), so the Slicer module can import it to measure a sequence it
holds itself. A class's volume in a frame is its voxel count times the voxel volume.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np

MM3_PER_ML = 1000.0


def voxel_volume_ml(spacing: Sequence[float]) -> float:
    """The volume of one voxel (spacing in mm) in millilitres."""
    return float(np.prod(np.asarray(spacing, dtype=float))) / MM3_PER_ML


def class_volumes_ml(labels: np.ndarray, spacing: Sequence[float], classes: Mapping[int, str]) -> dict[str, float]:
    """Each class's volume (ml) in one label map; ``classes`` maps label value -> class name."""
    counts = np.bincount(np.asarray(labels).ravel().astype(np.int64), minlength=max(classes, default=0) + 1)
    unit = voxel_volume_ml(spacing)
    return {name: float(counts[value]) * unit for value, name in classes.items()}


def curve_from_counts(counts: Iterable[Mapping[str, int]], spacing: Sequence[float],
                      names: Sequence[str]) -> dict[str, list[float]]:
    """Per class, its volume (ml) in each frame, from voxel counts per frame {class name: count}."""
    unit = voxel_volume_ml(spacing)
    frames = list(counts)
    return {name: [float(frame.get(name, 0)) * unit for frame in frames] for name in names}


def curve_summary(curve: Mapping[str, Sequence[float]]) -> dict[str, dict[str, float | int | None]]:
    """Per class: the largest and smallest volume and their frames, and the ejection fraction
    100 * (max - min) / max in percent (meaningful for cavities such as the ventricles; None when
    the class is absent from every frame, or when the sequence has one frame: no change to measure)."""
    summary: dict[str, dict[str, float | int | None]] = {}
    for name, values in curve.items():
        array = np.asarray(values, dtype=float)
        if array.size == 0:
            continue
        largest, smallest = int(np.argmax(array)), int(np.argmin(array))
        top, bottom = float(array[largest]), float(array[smallest])
        summary[name] = {"max_ml": top, "max_frame": largest, "min_ml": bottom, "min_frame": smallest,
                         "ejection_fraction": 100.0 * (top - bottom) / top if top > 0 and array.size > 1 else None}
    return summary
