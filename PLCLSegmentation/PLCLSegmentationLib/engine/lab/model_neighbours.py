"""Give a model trained before model files held ``neighbour_shares`` and ``slice_coverage`` what its training would
have stored.

``python -m PLCLSegmentationLib.engine.lab.model_neighbours RUN_FOLDER OUT_MODEL`` reads the run's job.json
(its annotated volumes and slices, as ``plcl train --resume`` reads them), prepares the annotations as the
training did (the model's pixel size, intensity window and in-plane reference) and writes a copy of the run's
model with their neighbour shares and slice coverage (method/quality.py); the run folder is left as it was. For
studies of the quality estimate on models that were trained before
(docs/results/2026-12-04-review-estimate-neighbours.md, docs/results/2026-12-07-review-estimate-coverage.md).
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import torch

from ..method.modelfile import build_model, read_model, save_model
from ..method.preprocess import prepare_volume, stack_mask
from ..method.quality import annotated_neighbour_shares, annotated_slice_coverage
from ..protocol import MODEL_FILE
from ..request import read_job
from ..run.inputs import read_training_inputs


def with_neighbour_shares(run: Path, out: Path) -> tuple[tuple[float, ...], ...]:
    """Write ``out``: the model of the training run folder ``run`` with its annotations' neighbour shares and slice
    coverage; returns the shares."""
    info, state = read_model(run / MODEL_FILE)
    inputs = read_training_inputs(dataclasses.replace(read_job(run), unlabeled=[]))  # the annotated alone
    stacks = []
    for (volume, labels), rows in zip(inputs.annotated, inputs.annotated_slices):
        prepared, _ = prepare_volume(volume, info.target_spacing_mm, tuple(info.intensity_percentiles), labels,
                                     info.num_classes, info.in_plane_reference)
        stacks.append((prepared.labels.numpy(), None if rows is None else stack_mask(prepared.layout, rows).numpy()))
    info = dataclasses.replace(info, neighbour_shares=annotated_neighbour_shares(stacks, info.num_classes),
                               slice_coverage=annotated_slice_coverage(stacks, info.num_classes))
    save_model(out, build_model(run / MODEL_FILE, info, state, torch.device("cpu")), info)
    return info.neighbour_shares


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        sys.exit("usage: python -m PLCLSegmentationLib.engine.lab.model_neighbours RUN_FOLDER OUT_MODEL")
    shares = with_neighbour_shares(Path(args[0]), Path(args[1]))
    print(f"{args[1]}: neighbour shares {[list(row) for row in shares]}")


if __name__ == "__main__":
    main()
