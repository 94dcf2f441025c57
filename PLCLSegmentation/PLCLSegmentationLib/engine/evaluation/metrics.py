"""Evaluation metrics on 3D label maps: Dice and 95th-percentile Hausdorff distance (HD95) in mm.

Conventions (the ones used by most segmentation papers and MONAI, so numbers are comparable):

- Dice of a structure is ``2|P∩R| / (|P|+|R|)``. When the structure is absent from both the
  prediction and the reference it is undefined: ``None``, and left out of every mean (a correct
  "nothing here" should neither reward nor penalise). When exactly one is empty, Dice is 0.
- HD95 follows MONAI's ``compute_hausdorff_distance(percentile=95)`` (and MedPy's ``hd95``): the
  surface of a mask is the mask minus its erosion by the 6-neighbour cross (scipy's default
  structuring element), voxels outside the array counting as background; for every surface voxel
  of one mask, the Euclidean distance in mm (physical, anisotropic spacing) to the nearest surface
  voxel of the other; the larger of the two
  directed 95th percentiles (linear interpolation). It is ``None`` when either mask is empty (no
  finite distance exists; the miss already shows as Dice 0).

Arrays are ``[k, j, i]`` as everywhere in the engine, so spacing is given in that order too
(``Grid.spacing`` is ``(i, j, k)``: reverse it).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from scipy import ndimage

from ..errors import InputError
from ..files import volumes
from ..files.volumes import ClassInfo, Volume

#: The 6-neighbour cross: a voxel is on the surface when a face neighbour is background (MONAI, MedPy).
_FACE_CONNECTIVITY = ndimage.generate_binary_structure(3, 1)


# --- per-volume metrics -------------------------------------------------------------------------


def _check_pair(pred: np.ndarray, ref: np.ndarray) -> None:
    if pred.shape != ref.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from reference shape {ref.shape}")
    if pred.ndim != 3:
        raise ValueError(f"3D label maps are needed, got {pred.ndim}D")


def dice_per_class(pred: np.ndarray, ref: np.ndarray, values: Sequence[int]) -> dict[int, float | None]:
    """Dice per label value: ``None`` when both masks are empty, 0.0 when exactly one is."""
    _check_pair(pred, ref)
    result: dict[int, float | None] = {}
    for value in values:
        p = pred == value
        r = ref == value
        n_pred, n_ref = int(np.count_nonzero(p)), int(np.count_nonzero(r))
        if n_pred == 0 and n_ref == 0:
            result[int(value)] = None
            continue
        overlap = int(np.count_nonzero(p & r))
        result[int(value)] = 2.0 * overlap / (n_pred + n_ref)
    return result


def _bounding_box(mask: np.ndarray, margin: int) -> tuple[slice, ...] | None:
    """The slices of ``mask``'s non-zero bounding box grown by ``margin`` (clipped to the array)."""
    box = []
    for axis in range(mask.ndim):
        other = tuple(a for a in range(mask.ndim) if a != axis)
        present = np.flatnonzero(mask.any(axis=other))
        if present.size == 0:
            return None
        start, stop = int(present[0]) - margin, int(present[-1]) + 1 + margin
        box.append(slice(max(0, start), min(mask.shape[axis], stop)))
    return tuple(box)


def _surface(mask: np.ndarray) -> np.ndarray:
    """Mask voxels with at least one of their 6 face neighbours in the background (or outside the array)."""
    return mask & ~ndimage.binary_erosion(mask, structure=_FACE_CONNECTIVITY, border_value=0)


def hausdorff95(a: np.ndarray, b: np.ndarray, spacing_kji: Sequence[float],
                percentile: float = 95.0) -> float | None:
    """Symmetric percentile Hausdorff distance (mm) between two boolean masks; None if either is empty.

    Both masks are cropped to their joint bounding box first: every surface voxel of either mask
    lies inside it, so the distances are exact, and the cost follows the structures' size, not the
    volume's. A one-voxel margin keeps erosion at the crop's edge the same as in the full array.
    """
    a = np.asarray(a, dtype=bool)
    b = np.asarray(b, dtype=bool)
    if a.shape != b.shape:
        raise ValueError(f"mask shapes differ: {a.shape} and {b.shape}")
    if len(spacing_kji) != a.ndim or any(not (float(s) > 0) for s in spacing_kji):
        raise ValueError(f"spacing {tuple(spacing_kji)} must have {a.ndim} positive values")
    if not a.any() or not b.any():
        return None
    box = _bounding_box(a | b, margin=1)
    assert box is not None
    a, b = a[box], b[box]
    surface_a, surface_b = _surface(a), _surface(b)
    sampling = tuple(float(s) for s in spacing_kji)
    # distance_transform_edt measures to the nearest zero: zeros on the other mask's surface.
    to_b = ndimage.distance_transform_edt(~surface_b, sampling=sampling)[surface_a]
    to_a = ndimage.distance_transform_edt(~surface_a, sampling=sampling)[surface_b]
    return float(max(np.percentile(to_b, percentile), np.percentile(to_a, percentile)))


def hd95_per_class(pred: np.ndarray, ref: np.ndarray, values: Sequence[int],
                   spacing_kji: Sequence[float]) -> dict[int, float | None]:
    """HD95 in mm per label value (see the module docstring); None when either mask is empty."""
    _check_pair(pred, ref)
    return {int(v): hausdorff95(pred == v, ref == v, spacing_kji) for v in values}


# --- evaluating files ---------------------------------------------------------------------------


def _mean(values: Sequence[float | None]) -> float | None:
    present = [float(v) for v in values if v is not None]
    return float(np.mean(present)) if present else None


def _normalise_name(name: str) -> str:
    return " ".join(name.replace("_", " ").split()).casefold()


def _read_reference(path: str) -> tuple[Volume, np.ndarray, list[ClassInfo] | None]:
    """The reference's grid (as a Volume the predictions are placed on) and its label values."""
    if path.lower().endswith(".seg.nrrd"):
        import slicerio

        try:
            segmentation = slicerio.read_segmentation(path)
            size = tuple(int(n) for n in np.shape(segmentation["voxels"])[-3:])  # (i, j, k)
            grid = volumes.Grid.from_ijk_to_lps(size, segmentation["ijkToLPS"])
        except Exception as error:  # pynrrd raises several types for a damaged file
            raise InputError(path, f"cannot be read as a Slicer segmentation ({error})") from None
        volume = Volume(volumes.volume_name(path), path, np.zeros(size[::-1], dtype=np.uint8), grid)
        labels, classes = volumes.read_annotation(path, volume)
        return volume, labels, classes
    volume = volumes.read_volume(path)
    values = volume.array
    if not np.all(np.equal(np.mod(values, 1), 0)):
        raise InputError(path, "has non-integer voxel values; a reference label map of whole numbers "
                               "is needed")
    if values.min() < 0 or values.max() > 255:
        raise InputError(path, f"has label values from {values.min():g} to {values.max():g}; "
                               "0 to 255 are supported")
    return volume, values.astype(np.uint8), None


def to_class_values(path: str, labels: np.ndarray, segments: list[ClassInfo] | None,
                     classes: Sequence[ClassInfo], warnings: list[str]) -> np.ndarray:
    """Label values of ``classes`` from a file's own numbering; segments are matched by name."""
    if segments is None:  # a plain label map: its values are the class values, and only those
        allowed = {0} | {c.value for c in classes}
        outside = sorted(set(np.unique(labels).tolist()) - allowed)
        if outside:
            raise InputError(path, f"has label values {', '.join(map(str, outside))} outside the classes "
                                   f"{', '.join(f'{c.value} {c.name}' for c in classes)} (they would count as "
                                   "background)")
        return labels
    by_name = {_normalise_name(c.name): c.value for c in classes}
    lookup = np.zeros(256, dtype=np.uint8)
    unmatched = []
    for segment in segments:
        value = by_name.get(_normalise_name(segment.name))
        if value is None:
            unmatched.append(segment.name)
        else:
            lookup[segment.value] = value
    if segments and len(unmatched) == len(segments):
        found = ", ".join(repr(s.name) for s in segments)
        wanted = ", ".join(repr(c.name) for c in classes)
        raise InputError(path, f"no segment name ({found}) matches a class ({wanted})")
    if unmatched:
        warnings.append(f"{path}: segments {', '.join(repr(n) for n in unmatched)} match no class; ignored")
    return lookup[labels]


def evaluate_folder(pred_paths: Mapping[str, str | os.PathLike[str]],
                    ref_paths: Mapping[str, str | os.PathLike[str]],
                    classes: Sequence[ClassInfo]) -> dict[str, Any]:
    """Dice and HD95 per case and structure, and their means, as a JSON-able report.

    ``pred_paths`` and ``ref_paths`` map case names to files. Predictions are ``.seg.nrrd`` files
    (segments matched to ``classes`` by name, case-insensitively) or plain label maps (values are
    class values); references are label maps (or ``.seg.nrrd``). A prediction must lie on its
    reference's grid (a Slicer-cropped ``.seg.nrrd`` on a sub-grid is placed exactly); otherwise an
    InputError names the file. References without a prediction are listed, not evaluated.
    Means are over cases of the defined per-case values; the overall mean is over structures.
    """
    foreground = [c for c in classes if c.value > 0]
    if not foreground:
        raise ValueError("no foreground classes to evaluate")
    names = [c.name for c in foreground]
    if len(set(names)) != len(names):
        raise ValueError(f"class names must be unique: {names}")
    if not pred_paths:
        raise InputError(None, "no predictions to evaluate")
    values = [c.value for c in foreground]
    warnings: list[str] = []
    cases: dict[str, Any] = {}
    for case in sorted(pred_paths):
        pred_path = str(pred_paths[case])
        if case not in ref_paths:
            raise InputError(pred_path, f"no reference label map for case '{case}'")
        ref_path = str(ref_paths[case])
        ref_volume, ref_labels, ref_segments = _read_reference(ref_path)
        ref_labels = to_class_values(ref_path, ref_labels, ref_segments, foreground, warnings)
        pred_labels, pred_segments = volumes.read_annotation(pred_path, ref_volume)  # raises off-grid
        pred_labels = to_class_values(pred_path, pred_labels, pred_segments, foreground, warnings)
        spacing_kji = tuple(ref_volume.grid.spacing)[::-1]
        dice = dice_per_class(pred_labels, ref_labels, values)
        hd95 = hd95_per_class(pred_labels, ref_labels, values, spacing_kji)
        cases[case] = {
            "prediction": pred_path,
            "reference": ref_path,
            "dice": {c.name: dice[c.value] for c in foreground},
            "hd95_mm": {c.name: hd95[c.value] for c in foreground},
            "mean_dice": _mean(list(dice.values())),
            "mean_hd95_mm": _mean(list(hd95.values())),
        }
    per_class_dice = {n: _mean([cases[k]["dice"][n] for k in cases]) for n in names}
    per_class_hd95 = {n: _mean([cases[k]["hd95_mm"][n] for k in cases]) for n in names}
    return {
        "classes": [{"value": c.value, "name": c.name} for c in foreground],
        "n_cases": len(cases),
        "cases": cases,
        "mean": {
            "dice": per_class_dice,
            "hd95_mm": per_class_hd95,
            "mean_dice": _mean(list(per_class_dice.values())),
            "mean_hd95_mm": _mean(list(per_class_hd95.values())),
            "cases_counted": {
                "dice": {n: sum(cases[k]["dice"][n] is not None for k in cases) for n in names},
                "hd95_mm": {n: sum(cases[k]["hd95_mm"][n] is not None for k in cases) for n in names},
            },
        },
        "missing_predictions": sorted(set(ref_paths) - set(pred_paths)),
        "warnings": warnings,
    }


def format_table(report: Mapping[str, Any]) -> str:
    """A fixed-width Markdown table: one row per case and a mean row, Dice and HD95 per structure."""
    names = [c["name"] for c in report["classes"]]
    header = ["case"]
    for name in names:
        header += [f"{name} Dice", f"{name} HD95 mm"]
    header += ["mean Dice", "mean HD95 mm"]

    def dice(v: float | None) -> str:
        return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3f}"

    def hd(v: float | None) -> str:
        return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.2f}"

    def row(label: str, entry: Mapping[str, Any]) -> list[str]:
        cells = [label]
        for name in names:
            cells += [dice(entry["dice"].get(name)), hd(entry["hd95_mm"].get(name))]
        return cells + [dice(entry.get("mean_dice")), hd(entry.get("mean_hd95_mm"))]

    rows = [row(case, entry) for case, entry in report["cases"].items()]
    rows.append(row(f"mean ({report.get('n_cases', len(report['cases']))} cases)", report["mean"]))
    widths = [max(len(r[c]) for r in [header, *rows]) for c in range(len(header))]

    def line(cells: list[str]) -> str:
        padded = [cells[0].ljust(widths[0])] + [cell.rjust(w) for cell, w in zip(cells[1:], widths[1:])]
        return "| " + " | ".join(padded) + " |"

    rule = "|" + "|".join(["-" * (widths[0] + 2)] + ["-" * (w + 1) + ":" for w in widths[1:]]) + "|"
    lines = [line(header), rule] + [line(r) for r in rows[:-1]] + [line(rows[-1])]
    missing = report.get("missing_predictions") or []
    if missing:
        lines.append("")
        lines.append(f"Not evaluated (no prediction): {', '.join(missing)}")
    return "\n".join(lines)
