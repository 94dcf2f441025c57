"""What each clean-up of a model's segmentations gives on a labelled split.

``python -m PLCLSegmentationLib.engine.lab.cleanup_study MODEL [MODEL ...] --data DIR --split val [--out FILE.md]``
segments the split once per model with no clean-up (no quality estimate) and scores the same labels
cleaned up each way (method/components.py): as segmented; each class kept as its largest piece (the
engine until 2026-12-07, and model files from before); all structures together first, then each
class; as the model file says (``single_objects``, read from its annotations; the organ's piece by size and
agreement where it holds neighbour shares, as ``plcl predict`` cleans up); and all structures together by
size and agreement, then each class. Per way: the mean
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
from ..files.volumes import read_annotation, read_volume
from ..method.components import keep_largest_components, legacy_objects
from ..method.predictor import Predictor
from .text_report import publish

#: A structure a segmentation holds at less than this Dice counts as lost.
LOST_BELOW = 0.1
#: The model file's own clean-up, as plcl predict makes it (by agreement where the model holds neighbour shares).
MODELS = "the model's (its annotations)"
#: The engine's clean-up where the model file holds neighbour shares (components.organ_piece, since 2026-12-07).
BY_AGREEMENT = "the whole by size x agreement^2, then each class"


def ways(num_classes: int, recorded: tuple[bool, ...] | None) -> dict[str, tuple[bool, ...]]:
    """The clean-ups compared, by name: which structures each keeps as their largest piece."""
    return {"none": (False,) * num_classes, "each class": legacy_objects(num_classes),
            "the whole, then each class": (True,) * num_classes,
            MODELS: recorded or legacy_objects(num_classes)}


def study(model: str, data: str, split: str, device: str = "cpu") -> dict[str, dict[str, object]]:
    """Per clean-up: per-structure Dice lists over the split's volumes and the lost pairs."""
    dataset = read_dataset(data)
    predictor = Predictor.load(model, torch.device(device), estimate="off")
    recorded = predictor.info.single_objects
    predictor.info = dataclasses.replace(predictor.info, largest_component=False)
    classes = predictor.classes
    shares = None if predictor.info.neighbour_shares is None else np.array(predictor.info.neighbour_shares)
    compared: dict[str, Callable[[np.ndarray], np.ndarray]] = {
        way: functools.partial(keep_largest_components, objects=objects, shares=shares if way == MODELS else None)
        for way, objects in ways(predictor.num_classes, recorded).items()}
    if shares is not None:
        compared[BY_AGREEMENT] = functools.partial(keep_largest_components, objects=(True,) * predictor.num_classes,
                                                   shares=shares)
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
    publish(text, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
