"""Where along the stack a model's errors lie: the structures it segments beyond the reference's slices.

``python -m PLCLSegmentationLib.engine.lab.stack_ends PREDICT [PREDICT ...] --data DIR --split val [--out F.md]``
reads the segmentations of ``plcl predict`` folders (``predictions/<case>.seg.nrrd``, and
``uncertainty/<case>.nrrd`` where the folder has it) and, per structure and group of cases (the last
``_`` part of a case name: ``frame01`` and ``frame02`` of ACDC, end-diastole and end-systole), gives: the
Dice as segmented; the Dice if the structure were cut to the slices where the reference holds it (what a
reviewer who deletes it from the slices beyond gains: an upper bound, not a clean-up); the voxels
segmented in slices beyond the reference's first and last at each end of the stack (per case, the
low-index end first); and the model's mean uncertainty on those voxels against its other voxels of the
structure (a confident error cannot be thresholded away). The stack is the slice axis the engine
segments along (the coarsest). No network runs: the folders' files are scored as written.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from .. import slicing
from ..errors import InputError
from ..evaluation.metrics import dice_per_class, to_class_values
from ..files.dataset import read_dataset
from ..files.volumes import ClassInfo, Volume, read_annotation, read_volume
from .text_report import publish


@dataclass
class Tally:
    """One structure's findings over a group of cases."""

    dice: list[float] = field(default_factory=list)
    dice_within: list[float] = field(default_factory=list)
    beyond_low: list[int] = field(default_factory=list)
    beyond_high: list[int] = field(default_factory=list)
    uncertainty_beyond: list[float] = field(default_factory=list)  # every such voxel's value, pooled
    uncertainty_within: list[float] = field(default_factory=list)


def group_of(case: str) -> str:
    return case.rsplit("_", 1)[-1] if "_" in case else "all"


def read_values(path: str, volume: Volume, classes: list[ClassInfo], warnings: list[str]) -> np.ndarray:
    """A file's label values as the dataset's (a .seg.nrrd's segments matched by name, as plcl evaluate does)."""
    values, segments = read_annotation(path, volume)
    return to_class_values(path, values, segments, classes, warnings)


def beyond_reference(predicted: np.ndarray, reference: np.ndarray, slice_axis: int) -> tuple[np.ndarray, int, int]:
    """The mask of ``predicted`` voxels in slices outside the reference's first to last slice, and their
    counts at the low-index and the high-index end (the whole mask where the reference is empty)."""
    other = tuple(a for a in range(3) if a != slice_axis)
    held = np.flatnonzero(reference.any(axis=other))
    position = np.arange(predicted.shape[slice_axis])
    shape = [1, 1, 1]
    shape[slice_axis] = -1
    if held.size == 0:
        return predicted.copy(), int(predicted.sum()), 0
    low = (position < held[0]).reshape(shape) & predicted
    high = (position > held[-1]).reshape(shape) & predicted
    return low | high, int(low.sum()), int(high.sum())


def study(folder: Path, data: str, split: str) -> dict[str, dict[str, Tally]]:
    """Per group of cases and structure name: the Tally of one plcl predict folder."""
    dataset = read_dataset(data)
    classes = [ClassInfo(value, name, (1.0, 1.0, 1.0)) for value, name in dataset.label_names.items() if value > 0]
    warnings: list[str] = []
    found: dict[str, dict[str, Tally]] = {}
    for case in dataset.split(split):
        path = folder / "predictions" / f"{case}.seg.nrrd"
        reference_path = dataset.label(case)
        if not path.is_file() or reference_path is None:
            continue
        volume = read_volume(dataset.image(case))
        reference = read_values(reference_path, volume, classes, warnings)
        labels = read_values(str(path), volume, classes, warnings)
        axis = slicing.canonical(volume.grid.direction_matrix, volume.grid.spacing).slice_axis
        uncertainty_path = folder / "uncertainty" / f"{case}.nrrd"
        uncertainty = (sitk.GetArrayFromImage(sitk.ReadImage(str(uncertainty_path))).astype(np.float32)
                       if uncertainty_path.is_file() else None)
        for c in classes:
            tally = found.setdefault(group_of(case), {}).setdefault(c.name, Tally())
            predicted, truth = labels == c.value, reference == c.value
            beyond, low, high = beyond_reference(predicted, truth, axis)
            tally.beyond_low.append(low)
            tally.beyond_high.append(high)
            if truth.any():
                tally.dice.append(dice_per_class(predicted.astype(np.uint8), truth.astype(np.uint8), [1])[1])
                tally.dice_within.append(dice_per_class((predicted & ~beyond).astype(np.uint8),
                                                        truth.astype(np.uint8), [1])[1])
            if uncertainty is not None and uncertainty.shape == labels.shape:
                tally.uncertainty_beyond.extend(uncertainty[beyond].tolist())
                tally.uncertainty_within.extend(uncertainty[predicted & ~beyond].tolist())
    for warning in warnings:  # segments of no dataset label, left out as plcl evaluate leaves them
        print(f"stack_ends: {warning}", file=sys.stderr)
    if not found:
        raise InputError(str(folder), f"holds no predictions/<case>.seg.nrrd of a labelled case of split {split!r}")
    return found


def _mean(values: list[float]) -> str:
    return f"{np.mean(values):.3f}" if values else "-"


def markdown(results: dict[str, dict[str, dict[str, Tally]]]) -> str:
    lines = ["| predictions | group | structure | cases | Dice | Dice within the reference's slices | "
             "voxels beyond, low end (per case) | beyond, high end | cases with any beyond | "
             "uncertainty beyond | uncertainty within |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for folder, groups in results.items():
        for group, structures in sorted(groups.items()):
            for name, t in structures.items():
                with_any = sum(1 for low, high in zip(t.beyond_low, t.beyond_high) if low + high > 0)
                lines.append(f"| {folder} | {group} | {name} | {len(t.beyond_low)} | {_mean(t.dice)} | "
                             f"{_mean(t.dice_within)} | {np.mean(t.beyond_low):.0f} | {np.mean(t.beyond_high):.0f} | "
                             f"{with_any} | {_mean(t.uncertainty_beyond)} | {_mean(t.uncertainty_within)} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="stack_ends", description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="+", type=Path, help="plcl predict output folders")
    parser.add_argument("--data", required=True)
    parser.add_argument("--split", required=True)
    parser.add_argument("--out", type=Path, help="also write the table here")
    args = parser.parse_args(argv)
    try:
        text = markdown({str(folder): study(folder, args.data, args.split) for folder in args.folders})
    except InputError as error:
        print(f"stack_ends: {error}", file=sys.stderr)
        return 1
    publish(text, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
