"""Properties of the local contrastive loss and the segmentation loss."""

from __future__ import annotations

import math

import pytest
import torch

from PLCLSegmentationLib.engine.method.batches import contrastive_pairs
from PLCLSegmentationLib.engine.method.losses import IGNORE, PrototypeMemory, local_contrastive_loss, soft_dice_loss
from PLCLSegmentationLib.engine.method.network import UNet2D


def _labels(n: int = 4, size: int = 16, classes: int = 4) -> torch.Tensor:
    """Vertical bands of classes 0..classes-1."""
    labels = torch.zeros((n, size, size), dtype=torch.long)
    width = size // classes
    for c in range(classes):
        labels[:, :, c * width:(c + 1) * width] = c
    return labels


def _clustered_embeddings(labels: torch.Tensor, dim: int = 16, noise: float = 0.05) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    centres = torch.randn((int(labels.max()) + 1, dim), generator=g)
    z = centres[labels].permute(0, 3, 1, 2)
    return z + noise * torch.randn(z.shape, generator=g)


def _loss(z: torch.Tensor, labels: torch.Tensor, seed: int = 0) -> torch.Tensor:
    n = labels.shape[0]
    pairs = torch.tensor([(i, (i + 1) % n) for i in range(n)])
    return local_contrastive_loss(z, labels, pairs, num_classes=4, temperature=0.1, anchors_per_class=3,
                                  generator=torch.Generator().manual_seed(seed))


def test_lower_when_embeddings_cluster_by_class():
    labels = _labels()
    clustered = _loss(_clustered_embeddings(labels), labels)
    random = _loss(torch.randn((4, 16, 16, 16), generator=torch.Generator().manual_seed(1)), labels)
    assert clustered < random
    # Perfect clusters reach the bound: each anchor shares its class with the two means of its
    # class (one per image) among 2 x 3 candidates, so the loss tends to log(2).
    assert clustered == pytest.approx(math.log(2), abs=0.05)


def test_finite_when_a_class_is_absent_from_an_image():
    labels = _labels()
    labels[0][labels[0] == 2] = 0  # class 2 missing from image 0
    labels[1][labels[1] == 3] = IGNORE  # class 3 ignored in image 1
    z = torch.randn((4, 16, 16, 16), requires_grad=True)
    loss = _loss(z, labels)
    assert torch.isfinite(loss)
    loss.backward()
    assert torch.isfinite(z.grad).all()


def test_zero_and_finite_gradients_when_no_foreground():
    labels = torch.zeros((2, 8, 8), dtype=torch.long)
    z = torch.randn((2, 16, 8, 8), requires_grad=True)
    loss = local_contrastive_loss(z, labels, torch.tensor([[0, 1]]), num_classes=4)
    assert loss.item() == 0.0
    loss.backward()
    assert torch.isfinite(z.grad).all()


def test_only_foreground_anchors_and_negatives():
    """Changing background embeddings must not change the loss."""
    labels = _labels()
    z = _clustered_embeddings(labels, noise=0.3)
    z2 = z.clone()
    background = (labels == 0).unsqueeze(1).expand_as(z2)
    z2[background] = torch.randn(int(background.sum()))
    assert _loss(z, labels, seed=3) == pytest.approx(_loss(z2, labels, seed=3).item(), rel=1e-5)


def test_gradients_reach_the_encoder():
    torch.manual_seed(0)
    model = UNet2D(num_classes=4, base_channels=4, levels=3, embedding_dim=8)
    x = torch.randn((4, 1, 32, 32))
    labels = _labels(4, 32)
    _, (embeddings,) = model(x, with_embedding=True)
    loss = local_contrastive_loss(embeddings, labels, contrastive_pairs(1, 2), num_classes=4)
    loss.backward()
    first_conv = model.encoder[0][0].weight
    assert first_conv.grad is not None and first_conv.grad.abs().sum() > 0
    assert model.segmentation_head[-1].weight.grad is None  # the contrastive loss does not train the seg head


def test_coarser_embedding_levels_have_their_own_heads_and_train_their_decoder_level():
    torch.manual_seed(0)
    plain = UNet2D(num_classes=4, base_channels=4, levels=3, embedding_dim=8)
    model = UNet2D(num_classes=4, base_channels=4, levels=3, embedding_dim=8, embedding_levels=2)
    extra = set(model.state_dict()) - set(plain.state_dict())
    assert extra and all(k.startswith("coarse_projection_heads.0.") for k in extra)  # one-level weights unchanged
    x = torch.randn((4, 1, 32, 32))
    logits, (fine, coarse) = model(x, with_embedding=True)
    assert fine.shape == (4, 8, 32, 32) and coarse.shape == (4, 8, 16, 16) and logits.shape == (4, 4, 32, 32)
    labels = _labels(4, 32)
    local_contrastive_loss(coarse, labels[:, ::2, ::2], contrastive_pairs(1, 2), num_classes=4).backward()
    assert model.coarse_projection_heads[0][0].weight.grad.abs().sum() > 0
    assert model.projection_head[0].weight.grad is None  # the coarse loss does not reach the fine head
    assert model.decoder[-1][0].weight.grad is None  # nor the last decoder block, after the coarse level
    assert model.decoder[-2][0].weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="embedding_levels 3"):
        UNet2D(num_classes=4, base_channels=4, levels=3, embedding_levels=3)


def test_pairs_follow_the_method():
    pairs = [tuple(p) for p in contrastive_pairs(n_annotated=2, n=6).tolist()]
    assert [(i, i + 6) for i in range(6)] == pairs[:6]  # each slice with its second view
    assert (0, 8) in pairs and (1, 9) in pairs  # annotated with unannotated
    assert (2, 9) in pairs  # unannotated with unannotated
    assert all(a < 6 <= b for a, b in pairs)


def test_dice_loss_is_zero_for_a_perfect_prediction_and_ignores_ignored_pixels():
    labels = _labels(2, 8)
    logits = torch.nn.functional.one_hot(labels, 4).permute(0, 3, 1, 2).float() * 50
    assert soft_dice_loss(logits, labels).item() == pytest.approx(0.0, abs=1e-4)
    wrong = labels.clone()
    wrong[:, :2] = IGNORE
    logits[:, :, :2] = torch.randn_like(logits[:, :, :2])
    assert soft_dice_loss(logits, wrong).item() == pytest.approx(0.0, abs=1e-4)


def test_class_means_from_target_embeddings_carry_no_gradient():
    """With a teacher's embeddings as targets the means are theirs: the loss then depends on the
    student's embeddings through the anchors alone, and equals the plain loss when both agree."""
    labels = _labels()
    z = _clustered_embeddings(labels, noise=0.3).requires_grad_(True)
    pairs = torch.tensor([(0, 1), (2, 3)])

    def loss_of(student, targets):
        return local_contrastive_loss(student, labels, pairs, num_classes=4,
                                      generator=torch.Generator().manual_seed(5), target_embeddings=targets)

    same = loss_of(z, z.detach().clone())
    assert same.item() == pytest.approx(loss_of(z, None).item(), rel=1e-5)
    # Targets clustered by class pull the anchors' loss down; targets of noise leave it high.
    noise = torch.randn(z.shape, generator=torch.Generator().manual_seed(9))
    assert loss_of(z, _clustered_embeddings(labels, noise=0.0)) < loss_of(z, noise)
    targets = z.detach().clone().requires_grad_(True)
    loss_of(z, targets).backward()
    assert targets.grad is None and z.grad is not None and z.grad.abs().sum() > 0
    # Only anchor pixels get a gradient: 3 per foreground class and image at most.
    touched = (z.grad.abs().sum(1) > 0).sum().item()
    assert 0 < touched <= 4 * 3 * 3


def test_hard_anchors_are_the_pixels_placed_worst():
    """anchor_sampling='hard': where a few pixels of each class sit far from their class mean, they are
    the anchors (their loss is high); uniform anchors land on the typical pixels (loss near log 2).
    With the means held fixed (targets without gradient) only the anchors get a gradient: the outliers."""
    labels = _labels()
    z = _clustered_embeddings(labels, noise=0.0)
    outliers = torch.zeros(labels.shape, dtype=torch.bool)
    outliers[:, ::4, ::4] = True  # 4 x 4 of each 16 x 16 image: 4 pixels of each class band
    z = torch.where(outliers.unsqueeze(1), torch.randn(z.shape, generator=torch.Generator().manual_seed(3)), z)
    z.requires_grad_(True)
    pairs = torch.tensor([(0, 1), (2, 3)])

    def loss_of(hard: bool, seed: int) -> torch.Tensor:
        return local_contrastive_loss(z, labels, pairs, num_classes=4, anchors_per_class=3,
                                      generator=torch.Generator().manual_seed(seed), hard_anchors=hard,
                                      target_embeddings=z.detach())

    uniform = torch.stack([loss_of(False, s) for s in range(5)]).mean()
    hard = torch.stack([loss_of(True, s) for s in range(5)]).mean()
    assert hard > uniform + 1.0
    loss_of(True, 0).backward()
    touched = z.grad.abs().sum(1) > 0
    assert touched.sum().item() <= 4 * 3 * 3 and (touched & ~outliers).sum().item() == 0


def test_prototypes_replace_the_pairs_class_means():
    """contrastive_targets='memory': each anchor is contrasted with one prototype per class. Prototypes
    at the class centres give the bound log(1) = 0 for clustered embeddings; prototypes of another class
    order give a high loss; a class never seen is left out; the prototypes get no gradient."""
    labels = _labels()
    z = _clustered_embeddings(labels, noise=0.0)
    centres = torch.nn.functional.normalize(z[0, :, 0, [4, 8, 12]].T, dim=-1)  # classes 1, 2, 3
    pairs = torch.tensor([(0, 1), (2, 3)])

    def loss_of(vectors, seen):
        return local_contrastive_loss(z.requires_grad_(True), labels, pairs, num_classes=4,
                                      generator=torch.Generator().manual_seed(2), prototypes=(vectors, seen))

    everything = torch.ones(3, dtype=torch.bool)
    at_centres = loss_of(centres, everything).item()
    assert at_centres == pytest.approx(0.0, abs=0.05)
    assert loss_of(centres[[1, 2, 0]], everything).item() > at_centres + 5
    vectors = centres.clone().requires_grad_(True)
    loss_of(vectors, everything).backward()
    assert vectors.grad is None
    # Class 2's prototype not yet seen: its anchors are left out, and it is no negative for the others.
    wrong_unseen = centres.clone()
    wrong_unseen[1] = centres[0]
    # Seen, it is a second positive-looking prototype for class 1's anchors (log 2 each) and a wrong one for class 2's.
    assert loss_of(wrong_unseen, everything).item() > 2 * math.log(2) / 3 - 0.05
    assert loss_of(wrong_unseen, torch.tensor([True, False, True])).item() == pytest.approx(0.0, abs=0.05)


def test_prototype_memory_moves_towards_each_batchs_class_means():
    labels = _labels(n=2)
    z = _clustered_embeddings(labels, noise=0.0)
    memory = PrototypeMemory(num_classes=4, dim=16, momentum=0.9, device=torch.device("cpu"))
    without_class_3 = labels.clone()
    without_class_3[without_class_3 == 3] = IGNORE
    memory.update(z, without_class_3)
    centres = torch.nn.functional.normalize(z[0, :, 0, [4, 8, 12]].T, dim=-1)
    assert memory.seen.tolist() == [True, True, False]
    torch.testing.assert_close(memory.vectors[:2], centres[:2])  # first seen: the batch's mean
    assert memory.vectors[2].abs().sum() == 0
    swapped = labels.clone()  # classes 1 and 2 swap places: each one's batch mean is now the other's centre
    swapped[labels == 1], swapped[labels == 2] = 2, 1
    memory.update(z, swapped)
    torch.testing.assert_close(memory.vectors[2], centres[2])  # class 3 first seen now
    expected = torch.nn.functional.normalize(0.9 * centres[:2] + 0.1 * centres[[1, 0]], dim=-1)
    torch.testing.assert_close(memory.vectors[:2], expected)
    restored = PrototypeMemory(4, 16, 0.9, torch.device("cpu"))
    restored.load_state_dict(memory.state_dict())
    torch.testing.assert_close(restored.vectors, memory.vectors)
    assert torch.equal(restored.seen, memory.seen)
