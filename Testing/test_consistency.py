"""Weak-to-strong consistency: online labels from the teacher's weak view, CutMix between patches."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from test_train import TINY, _volumes

from PLCLSegmentationLib.engine.config import TrainConfig
from PLCLSegmentationLib.engine.errors import ConfigError
from PLCLSegmentationLib.engine.events import RecordingSink
from PLCLSegmentationLib.engine.method.batches import BatchMaker
from PLCLSegmentationLib.engine.method.consistency import cutmix, online_labels
from PLCLSegmentationLib.engine.method.losses import IGNORE
from PLCLSegmentationLib.engine.method.train import Trainer


class FixedLogits(torch.nn.Module):
    """A teacher whose logits are given: class 1 where the image is bright, surer the brighter."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.saw_training = self.training
        return torch.cat([torch.zeros_like(x), 4 * (x - 0.5)], dim=1)


def test_online_labels_are_the_teachers_classes_and_ignore_the_unsure_pixels():
    weak = torch.tensor([0.0, 0.45, 0.55, 1.0]).view(1, 1, 2, 2)
    teacher = FixedLogits().train()
    labels = online_labels(teacher, weak, confidence=0.0)
    assert labels.dtype == torch.uint8 and labels.flatten().tolist() == [0, 0, 1, 1]
    assert teacher.saw_training is False and teacher.training  # evaluated in eval mode, mode restored
    # p(class 1) at 0.55 is sigmoid(0.2) = 0.55 and at 0.45 p(class 0) is 0.55: both below 0.6.
    unsure = online_labels(teacher, weak, confidence=0.6).flatten().tolist()
    assert unsure == [0, IGNORE, IGNORE, 1]


def test_cutmix_pastes_one_box_of_another_patch_into_every_view_and_its_labels():
    generator = torch.Generator().manual_seed(0)
    n, size = 4, 16
    base = torch.arange(n, dtype=torch.float32).view(1, n, 1, 1, 1).expand(2, n, 1, size, size)
    views = base + torch.tensor([0.0, 0.5]).view(2, 1, 1, 1, 1)  # two views, told apart by +0.5
    labels = torch.arange(n, dtype=torch.uint8).view(n, 1, 1).expand(n, size, size).clone()
    before = (views.clone(), labels.clone())
    mixed_views, mixed_labels = cutmix(views, labels, 1.0, generator)
    assert torch.equal(views, before[0]) and torch.equal(labels, before[1])  # inputs untouched
    for i in range(n):
        pasted = mixed_labels[i] != i
        assert pasted.any() and (~pasted).any()
        area = int(pasted.sum())
        assert (size // 4) ** 2 <= area <= (size // 2) ** 2
        source = int(mixed_labels[i][pasted][0])
        assert source != i and (mixed_labels[i][pasted] == source).all()
        rows, cols = pasted.nonzero(as_tuple=True)  # one rectangle
        assert area == (int(rows.max() - rows.min()) + 1) * (int(cols.max() - cols.min()) + 1)
        for view, offset in ((0, 0.0), (1, 0.5)):  # the same box in both views, from the same source
            image = mixed_views[view, i, 0]
            assert torch.equal(image[pasted], torch.full((area,), source + offset))
            assert torch.equal(image[~pasted], torch.full((size * size - area,), i + offset))
    unchanged_views, unchanged_labels = cutmix(views, labels, 0.0, generator)
    assert torch.equal(unchanged_views, views) and torch.equal(unchanged_labels, labels)


def _trainer(config: TrainConfig) -> Trainer:
    annotated, unannotated = _volumes()
    trainer = Trainer(config, 3, [annotated], [unannotated], RecordingSink(), torch.device("cpu"))
    trainer.pseudo_labels = trainer.make_pseudo_labels()
    return trainer


def test_online_pseudo_labels_replace_the_stored_ones_for_the_unannotated_slices_only():
    config = dataclasses.replace(TINY, online_pseudo_labels=True)
    trainer = _trainer(config)
    batch = BatchMaker(config, trainer.annotated, trainer._pseudo_atlas(), seed=3).joint_batch()
    first, n = batch.unannotated_from, config.contrastive_images
    assert batch.weak_images is not None and batch.weak_images.shape[0] == n - first
    views, labels = trainer.contrastive_views(batch)
    assert torch.equal(views, batch.contrastive_images)  # no CutMix asked
    expected = online_labels(trainer.final_model, batch.weak_images, 0.0)
    assert torch.equal(labels[first:n], expected) and torch.equal(labels[n + first:], expected)
    assert torch.equal(labels[:first], batch.contrastive_labels[:first])  # annotated: ground truth
    # Without the option the stored pseudo-labels are kept and no weak view is made.
    stored = BatchMaker(TINY, trainer.annotated, trainer._pseudo_atlas(), seed=3).joint_batch()
    assert stored.weak_images is None
    assert torch.equal(trainer.contrastive_views(stored)[1], stored.contrastive_labels)


def test_cutmix_in_training_mixes_only_unannotated_slices():
    config = dataclasses.replace(TINY, cutmix_probability=1.0, contrastive_images=4)
    trainer = _trainer(config)
    batch = BatchMaker(config, trainer.annotated, trainer._pseudo_atlas(), seed=5).joint_batch()
    first, n = batch.unannotated_from, config.contrastive_images
    views, labels = trainer.contrastive_views(batch)
    assert torch.equal(views[:first], batch.contrastive_images[:first])
    assert torch.equal(views[n:n + first], batch.contrastive_images[n:n + first])
    assert not torch.equal(views[first:n], batch.contrastive_images[first:n])
    assert torch.equal(labels[:n], labels[n:])


def test_a_short_run_with_online_labels_and_cutmix_trains_every_loss(tmp_path):
    config = dataclasses.replace(TINY, online_pseudo_labels=True, cutmix_probability=0.5, teacher_ema=0.5)
    annotated, unannotated = _volumes()
    trainer = Trainer(config, 3, [annotated], [unannotated], RecordingSink(), torch.device("cpu"), tmp_path / "c.pt")
    trainer.run()
    assert {"segmentation", "contrastive", "pseudo_segmentation"} <= set(trainer.loss_history[-1])
    assert all(math.isfinite(value) for value in trainer.loss_history[-1].values())  # no NaN, no infinity


@pytest.mark.parametrize("value", [-0.1, 1.5])
def test_cutmix_probability_outside_0_to_1_is_refused(value):
    with pytest.raises(ConfigError, match="cutmix_probability"):
        TrainConfig(cutmix_probability=value).validated()
