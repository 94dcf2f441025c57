"""``plcl bench --labeled-slices K``: which slices of the annotated cases are annotated, or, for the
comparison at the same budget, which whole volumes hold as many slices."""

from __future__ import annotations

import random
from collections.abc import Callable

import numpy as np

from .. import slicing
from ..errors import ConfigError
from ..files.dataset import Dataset
from ..files.volumes import read_annotation, read_volume


def case_slices(dataset: Dataset, case: str) -> tuple[int, list[int]]:
    """A case's slice count along the slicing axis and its labelled slices (file indices)."""
    image, label = dataset.labeled_pair(case)
    volume = read_volume(image)
    labels, _ = read_annotation(label, volume)
    axis = slicing.canonical(volume.grid.direction_matrix, volume.grid.spacing).slice_axis
    return int(labels.shape[axis]), slicing.labelled_slices(labels, axis)


def spread_slices(labelled: list[int], count: int, rng: random.Random) -> list[int]:
    """``count`` slices spread through the labelled extent: the labelled slices cut into ``count``
    runs of (nearly) equal length, one slice drawn from each."""
    if count >= len(labelled):
        return list(labelled)
    return sorted(rng.choice(run.tolist()) for run in np.array_split(np.asarray(labelled), count))


def sparse_slices(dataset: Dataset, cases: list[str], count: int, seed: int) -> dict[str, list[int]]:
    rng = random.Random(seed + 2000)
    return {case: spread_slices(case_slices(dataset, case)[1], count, rng) for case in cases}


def whole_volumes(dataset: Dataset, first: list[str], pool: list[str], budget: int, seed: int,
                  size: Callable[[str], int] | None = None) -> list[str]:
    """Whole labelled volumes holding at most ``budget`` slices in all: the cases in ``first`` (the
    sparse run's cases) tried first, then the rest of ``pool`` in an order drawn by seed."""
    size = size or (lambda case: case_slices(dataset, case)[0])
    rest = [c for c in pool if c not in first and dataset.label(c)]
    random.Random(seed + 3000).shuffle(rest)
    chosen, total = [], 0
    for case in [*first, *rest]:
        slices = size(case)
        if total + slices <= budget:
            chosen.append(case)
            total += slices
    if not chosen:
        raise ConfigError(f"no whole labelled volume holds at most {budget} slices; the comparison with whole "
                          "volumes is not possible at this budget")
    return chosen
