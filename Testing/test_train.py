"""The trainer on a tiny problem: schedule, mean teacher, checkpoint round trip."""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
from conftest import phantom

from PLCLSegmentationLib.engine.config import TrainConfig
from PLCLSegmentationLib.engine.events import RecordingSink
from PLCLSegmentationLib.engine.preprocess import prepare_volume
from PLCLSegmentationLib.engine.train import Checkpoint, Trainer
from PLCLSegmentationLib.engine.volumes import Grid, Volume

TINY = TrainConfig(patch_size=32, levels=3, base_channels=4, embedding_dim=4, batch_size=2, contrastive_images=3,
                   warmup_iterations=2, rounds=2, joint_iterations=2, background_batches=False, precision="fp32")


def _volumes():
    grid = Grid((40, 48, 7), (1.0, 1.0, 5.0), (0.0, 0.0, 0.0), tuple(np.eye(3).ravel()))
    prepared = []
    for seed in (0, 1):
        image, labels = phantom(seed=seed)
        volume = Volume(f"v{seed}", f"v{seed}.nrrd", image.astype(np.float32), grid)
        prepared.append(prepare_volume(volume, 1.0, (1, 99), labels if seed == 0 else None, 3)[0])
    return prepared


def test_schedule_runs_warmup_then_rounds_with_pseudo_labels(tmp_path):
    annotated, unannotated = _volumes()
    sink = RecordingSink()
    trainer = Trainer(TINY, 3, [annotated], [unannotated], sink, torch.device("cpu"), tmp_path / "ckpt.pt")
    trainer.run()
    stages = [(e["stage"], e["round"]) for e in sink.events if e["event"] == "stage"]
    assert stages == [("warmup", 0), ("pseudo_labels", 1), ("joint", 1), ("pseudo_labels", 2), ("joint", 2)]
    assert trainer.iteration == 6 and len(trainer.pseudo_labels) == 1
    assert trainer.pseudo_labels[0].shape == unannotated.images.shape
    assert {"segmentation", "contrastive", "pseudo_segmentation"} <= set(trainer.loss_history[-1])


def test_mean_teacher_labels_and_is_the_final_model(tmp_path):
    annotated, unannotated = _volumes()
    config = dataclasses.replace(TINY, teacher_ema=0.5)
    trainer = Trainer(config, 3, [annotated], [unannotated], RecordingSink(), torch.device("cpu"), tmp_path / "c.pt")
    final = trainer.run()
    assert final is trainer.teacher and final is not trainer.model
    student, teacher = dict(trainer.model.named_parameters()), dict(trainer.teacher.named_parameters())
    assert any(not torch.equal(student[k], teacher[k]) for k in student)
    # BatchNorm statistics are averaged too, so they stay consistent with the averaged weights.
    student_stats, teacher_stats = dict(trainer.model.named_buffers()), dict(trainer.teacher.named_buffers())
    running = [k for k in student_stats if k.endswith("running_mean")]
    assert running and any(not torch.equal(student_stats[k], teacher_stats[k]) for k in running)
    restored = Trainer(config, 3, [annotated], [unannotated], RecordingSink(), torch.device("cpu"))
    restored.restore(Checkpoint.load(tmp_path / "c.pt"))
    for key, value in trainer.teacher.state_dict().items():
        torch.testing.assert_close(restored.teacher.state_dict()[key], value)
    assert restored.iteration == 6 and restored.pseudo_round == 2


def test_every_snapshot_is_saved_even_when_one_step_passes_several_points(tmp_path):
    # Eleven snapshots over six iterations: every step passes two snapshot points at once.
    annotated, unannotated = _volumes()
    config = dataclasses.replace(TINY, snapshots=11)
    trainer = Trainer(config, 3, [annotated], [unannotated], RecordingSink(), torch.device("cpu"), tmp_path / "c.pt")
    saved: list[tuple[int, int]] = []
    trainer.on_snapshot = lambda index, iteration: saved.append((index, iteration))
    trainer.run()
    assert [index for index, _ in saved] == list(range(1, 12))
    assert [iteration for _, iteration in saved] == sorted(iteration for _, iteration in saved)
    assert all(iteration <= 6 for _, iteration in saved)
