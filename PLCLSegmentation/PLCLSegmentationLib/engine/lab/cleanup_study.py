"""What each clean-up of a model's segmentations gives on a labelled split.

``python -m PLCLSegmentationLib.engine.lab.cleanup_study MODEL [MODEL ...] --data DIR --split val [--out FILE.md]``
segments the split once per model with no clean-up (no quality estimate) and scores the same labels
cleaned up each way (method/components.py): as segmented; each class kept as its largest piece (the
engine until 2026-12-07, and model files from before); all structures together first, then each
class; and as the model file says (``single_objects``, read from its annotations). Per way: the mean
Dice as ``plcl evaluate`` gives it (per structure over the volumes, then over the structures),
each structure's, and how many (volume, structure) pairs a segmentation lost
(Dice below 0.1 where the reference holds the structure). One network pass per model: the
differences are the clean-ups'.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from ..evaluation.metrics import dice_per_class
from ..files.dataset import read_dataset
from ..files.volumes import atomic_path, read_annotation, read_volume
from ..method.components import connected_pieces, keep_largest_components, legacy_objects
from ..method.predictor import Predictor
from ..method.quality import neighbour_counts, neighbour_overlap

#: A structure a segmentation holds at less than this Dice counts as lost.
LOST_BELOW = 0.1
#: The lead's name, and how strongly a piece's agreement with the annotations' neighbours weighs against its size.
BY_AGREEMENT = "the whole by size x agreement^2, then each class (a lead)"
AGREEMENT_POWER = 2
#: The lead scores the largest pieces only (a stray speck cannot outscore the organ).
PIECES_SCORED = 8


def piece_agreement(piece: np.ndarray, shares: np.ndarray) -> float:
    """How well the structures of one piece (class indices, 0 elsewhere) border each other as in the annotations:
    quality.neighbour_overlap of each structure, weighted by its voxels."""
    num_classes = len(shares)
    overlap = neighbour_overlap(neighbour_counts(piece, num_classes), shares)
    voxels = np.bincount(piece.ravel(), minlength=num_classes)[:num_classes]
    return float((overlap[1:] * voxels[1:]).sum() / max(1, voxels[1:].sum()))


def organ_by_agreement(labels: np.ndarray, shares: np.ndarray) -> np.ndarray:
    """``labels`` with all structures together kept as the piece of the highest voxels x agreement^AGREEMENT_POWER
    (``piece_agreement``), then each class as its largest piece inside it."""
    pieces = connected_pieces(labels > 0)
    best, score = 1, -1.0
    for index in range(1, min(int(pieces.max()), PIECES_SCORED) + 1):
        inside = pieces == index
        value = inside.sum() * piece_agreement(np.where(inside, labels, 0), shares) ** AGREEMENT_POWER
        if value > score:
            best, score = index, value
    organ = np.where(pieces == best, labels, 0).astype(labels.dtype)
    return keep_largest_components(organ, (False,) + (True,) * (len(shares) - 1))


def ways(num_classes: int, recorded: tuple[bool, ...] | None) -> dict[str, tuple[bool, ...]]:
    """The clean-ups compared, by name: which structures each keeps as their largest piece."""
    return {"none": (False,) * num_classes, "each class": legacy_objects(num_classes),
            "the whole, then each class": (True,) * num_classes,
            "the model's (its annotations)": recorded or legacy_objects(num_classes)}


def study(model: str, data: str, split: str, device: str = "cpu") -> dict[str, dict[str, object]]:
    """Per clean-up: per-structure Dice lists over the split's volumes and the lost pairs."""
    dataset = read_dataset(data)
    predictor = Predictor.load(model, torch.device(device), estimate="off")
    recorded = predictor.info.single_objects
    predictor.info = dataclasses.replace(predictor.info, largest_component=False)
    classes = predictor.classes
    compared: dict[str, Callable[[np.ndarray], np.ndarray]] = {
        way: functools.partial(keep_largest_components, objects=objects)
        for way, objects in ways(predictor.num_classes, recorded).items()}
    if predictor.info.neighbour_shares is not None:
        compared[BY_AGREEMENT] = functools.partial(organ_by_agreement, shares=np.array(predictor.info.neighbour_shares))
    found = {way: {"dice": {c.name: [] for c in classes}, "lost": 0} for way in compared}
    for case in dataset.split(split):
        volume = read_volume(dataset.image(case))
        prepared, _ = predictor.prepare(volume)
        values = predictor.predict(prepared).labels
        reference_values, _ = read_annotation(dataset.label(case), volume)
        labels = np.zeros(values.shape, np.uint8)
        reference = np.zeros(values.shape, np.uint8)
        for index, c in enumerate(classes, 1):
            labels[values == c.value] = index
            reference[reference_values == c.value] = index
        for way, clean_up in compared.items():
            dice = dice_per_class(clean_up(labels), reference, range(1, len(classes) + 1))
            for index, c in enumerate(classes, 1):
                if dice[index] is not None:
                    found[way]["dice"][c.name].append(dice[index])
                    if (reference == index).any() and dice[index] < LOST_BELOW:
                        found[way]["lost"] += 1
    return found


def markdown(results: dict[str, dict[str, dict[str, object]]]) -> str:
    names = list(next(iter(next(iter(results.values())).values()))["dice"])
    lines = ["| model | clean-up | mean Dice | " + " | ".join(f"Dice {n}" for n in names) + " | lost |",
             "|---|---|---|" + "---|" * len(names) + "---|"]
    for model, found in results.items():
        for way, scored in found.items():
            per = [float(np.mean(scored["dice"][n])) if scored["dice"][n] else float("nan") for n in names]
            lines.append(f"| {model} | {way} | {np.nanmean(per):.4f} | " + " | ".join(f"{d:.3f}" for d in per)
                         + f" | {scored['lost']} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="cleanup_study", description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+", help="model files (model.pt)")
    parser.add_argument("--data", required=True)
    parser.add_argument("--split", required=True)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, help="also write the table here")
    args = parser.parse_args(argv)
    text = markdown({model: study(model, args.data, args.split, args.device) for model in args.models})
    if args.out:
        with atomic_path(args.out) as tmp, open(tmp, "w") as f:
            f.write(text)
    print(text, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
