"""Weak-to-strong consistency for the unannotated patches of a joint batch (an option of the recipe).

With ``online_pseudo_labels`` the teacher labels each unannotated patch at every step from its weak
view (the spatial augmentation only), instead of the pseudo-labels stored at the start of the
round; the student then learns the patch's strong views (appearance changes, and CutMix boxes
pasted between unannotated patches). Labels follow the weights as they improve, and the
teacher never sees the perturbations the student must learn to ignore (FixMatch and UniMatch do
the same for classification and segmentation).
"""

from __future__ import annotations

import torch

from ..runtime import autocast_to
from .losses import IGNORE


@torch.no_grad()
def online_labels(teacher: torch.nn.Module, weak: torch.Tensor, confidence: float,
                  autocast: torch.dtype | None = None) -> torch.Tensor:
    """Labels uint8 [N, P, P] of weak views [N, 1, P, P]: the teacher's most probable class, IGNORE
    where its probability is below ``confidence``. The teacher runs in evaluation mode (its
    BatchNorm statistics are not disturbed) and is put back in the mode it was in."""
    was_training = teacher.training
    teacher.eval()
    try:
        with autocast_to(weak.device, autocast):
            logits = teacher(weak)
    finally:
        teacher.train(was_training)
    probability, label = logits.float().softmax(dim=1).max(dim=1)
    label = label.to(torch.uint8)
    if confidence > 0:
        label[probability < confidence] = IGNORE
    return label


def cutmix(views: torch.Tensor, labels: torch.Tensor, probability: float,
           generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Paste a random box of another patch into a share ``probability`` of the patches.

    views: [V, N, 1, P, P], V views of the same N patches (the box is the same in every view, so
    views stay views of one image); labels: [N, P, P]. The box covers a quarter to a half of the
    patch's side in each direction, anywhere in it. Returns new tensors; the inputs are unchanged.
    """
    _, n, _, height, width = views.shape
    device = views.device
    if n < 2 or probability <= 0:
        return views, labels
    mixed = torch.rand(n, generator=generator, device=device) < probability
    # Each patch takes its box from another patch: a random non-zero shift of the index.
    source = (torch.arange(n, device=device) + torch.randint(1, n, (n,), generator=generator, device=device)) % n
    box_h = (height * (0.25 + 0.25 * torch.rand(n, generator=generator, device=device))).long()
    box_w = (width * (0.25 + 0.25 * torch.rand(n, generator=generator, device=device))).long()
    top = (torch.rand(n, generator=generator, device=device) * (height - box_h + 1)).long()
    left = (torch.rand(n, generator=generator, device=device) * (width - box_w + 1)).long()
    rows = torch.arange(height, device=device).view(1, -1, 1)
    cols = torch.arange(width, device=device).view(1, 1, -1)
    inside = ((rows >= top.view(-1, 1, 1)) & (rows < (top + box_h).view(-1, 1, 1))
              & (cols >= left.view(-1, 1, 1)) & (cols < (left + box_w).view(-1, 1, 1)))
    inside = inside & mixed.view(-1, 1, 1)  # [N, P, P]
    new_views = torch.where(inside[None, :, None], views[:, source], views)
    new_labels = torch.where(inside, labels[source], labels)
    return new_views, new_labels
