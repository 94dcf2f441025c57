"""A retrain after review (a warm start) labels the volumes nobody corrected with the model the reviewer saw
(warm_start_labels="reviewed"), not with a model that first learnt the corrections alone ("warmed")."""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
from conftest import phantom

from PLCLSegmentationLib.engine.config import TrainConfig
from PLCLSegmentationLib.engine.events import RecordingSink
from PLCLSegmentationLib.engine.files.volumes import Grid, Volume
from PLCLSegmentationLib.engine.method.preprocess import prepare_volume, stack_mask
from PLCLSegmentationLib.engine.method.train import Trainer
from PLCLSegmentationLib.engine.request import fine_tuning_schedule

TINY = TrainConfig(patch_size=32, levels=3, base_channels=4, embedding_dim=4, batch_size=4, contrastive_images=3,
                   warmup_iterations=60, rounds=1, joint_iterations=4, background_batches=False, precision="fp32",
                   largest_component=False, learning_rate=3e-2)
GRID = Grid((40, 48, 7), (1.0, 1.0, 5.0), (0.0, 0.0, 0.0), tuple(np.eye(3).ravel()))
CORRECTED = [1, 3, 5]  # the slices a reviewer corrected and accepted


def _volume(name: str, seed: int, labels: np.ndarray | None = None, annotated: list[int] | None = None):
    image, truth = phantom(seed=seed)
    prepared = prepare_volume(Volume(name, f"{name}.nrrd", image.astype(np.float32), GRID), 1.0, (1, 99),
                              truth if labels is None else labels, 3)[0]
    if annotated is not None:
        prepared.annotated = stack_mask(prepared.layout, annotated)
    return prepared


def _trainer(config: TrainConfig, annotated, unannotated, initial=None) -> Trainer:
    return Trainer(config, 3, annotated, unannotated, RecordingSink(), torch.device("cpu"), initial_weights=initial)


def test_the_round_of_a_reviewed_warm_start_is_labelled_by_the_model_it_starts_from():
    reviewed_model = _trainer(dataclasses.replace(TINY, rounds=0), [_volume("a", 0)], []).run().state_dict()
    # The reviewer deleted the inner disc (class 2) from three slices of a volume and accepted them.
    _, truth = phantom(seed=2)
    corrected = truth.copy()
    corrected[CORRECTED] = np.where(corrected[CORRECTED] == 2, 0, corrected[CORRECTED])
    pseudo = {}
    for labels in ("reviewed", "warmed"):
        config = fine_tuning_schedule(dataclasses.replace(TINY, warm_start_labels=labels))
        trainer = _trainer(config, [_volume("b", 2, corrected, CORRECTED)], [_volume("c", 1)], reviewed_model)
        if labels == "reviewed":
            reference = [p.clone() for p in trainer.make_pseudo_labels()]  # before any step: the reviewed model's
        trainer.run()
        assert [e["stage"] for e in trainer.sink.events if e["event"] == "stage"] == \
            ["warmup", "pseudo_labels", "joint"]
        pseudo[labels] = trainer.pseudo_labels
    disc = [int((p == 2).sum()) for p in reference]
    assert min(disc) > 0  # the reviewed model segments the disc in the volumes nobody corrected

    def agreement(labels: list[torch.Tensor]) -> float:
        return float(np.mean([(a == b).float().mean() for a, b in zip(labels, reference)]))

    assert agreement(pseudo["reviewed"]) >= 0.99
    # A warm-up on the corrected slices alone first teaches the deletion, and the round's labels lose the disc.
    assert agreement(pseudo["warmed"]) < agreement(pseudo["reviewed"])
    assert sum(int((p == 2).sum()) for p in pseudo["warmed"]) < sum(disc)
