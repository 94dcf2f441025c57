"""Segmentation losses and the local contrastive loss of Chaitanya et al. (2023).

The contrastive loss is written here rather than taken from a library because it is the method
itself: class means per image, anchors per class, and a plain mean over all valid terms (the
released code's normalisation lets the last pair dominate; see method.md).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE = 255  #: label of pixels left out of every loss (e.g. low-confidence pseudo-labels)


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """1 - mean soft Dice over all classes, background included, pooled over the batch."""
    num_classes = logits.shape[1]
    probs = logits.float().softmax(dim=1)
    valid = (target != IGNORE).unsqueeze(1)
    one_hot = F.one_hot(target.long().clamp(max=num_classes - 1), num_classes).permute(0, 3, 1, 2)
    one_hot = one_hot * valid
    probs = probs * valid
    dims = (0, 2, 3)
    intersection = (probs * one_hot).sum(dims)
    denominator = probs.sum(dims) + one_hot.sum(dims)
    return 1.0 - ((2 * intersection + eps) / (denominator + eps)).mean()


def segmentation_loss(logits: torch.Tensor, target: torch.Tensor, kind: str = "dice_ce") -> torch.Tensor:
    loss = soft_dice_loss(logits, target)
    if kind == "dice_ce":
        loss = loss + F.cross_entropy(logits.float(), target.long(), ignore_index=IGNORE)
    return loss


def local_contrastive_loss(embeddings: torch.Tensor, labels: torch.Tensor, pairs: torch.Tensor,
                           num_classes: int, temperature: float = 0.1, anchors_per_class: int = 3,
                           generator: torch.Generator | None = None,
                           target_embeddings: torch.Tensor | None = None,
                           hard_anchors: bool = False,
                           prototypes: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """Local contrastive loss over pairs of images.

    embeddings: [N, D, H, W] projections; labels: [N, H, W] class per pixel (ground truth or
    pseudo-label; IGNORE is left out); pairs: [M, 2] indices into N. ``target_embeddings`` (same
    shape, e.g. a mean teacher's of the same views): where given, the class means come from them,
    without gradient (stable targets); the anchors are always ``embeddings``. ``hard_anchors``: the P
    anchors of a class are drawn without replacement with weights 1 - cos(u, own class mean), so the
    pixels the embedding places worst are the likeliest anchors (weighted sampling by the keys
    log(U) / w of Efraimidis and Spirakis); otherwise uniformly, as the paper. ``prototypes``
    (vectors [K, D], seen [K], a PrototypeMemory's): where given, every anchor is contrasted with one
    prototype per foreground class instead of the pair's class means, -log(exp(sim(u, p_c)) / sum over
    classes k seen of exp(sim(u, p_k))); classes not yet seen are neither positive nor negative.

    For an anchor u of foreground class c in image a of a pair (a, b), with
    D(u) = sum over foreground classes k present and both images j of exp(sim(u, mu_k^j)):
    terms -log(exp(sim(u, mu_c^a)) / D(u)) and -log(exp(sim(u, mu_c^b)) / D(u)), likewise for
    anchors in b. Background is neither anchor nor negative. Terms whose class is absent from an
    image are dropped; the loss is the mean of the remaining terms (0 when there are none).
    """
    n, dim = embeddings.shape[:2]
    z = F.normalize(embeddings.float().flatten(2), dim=1)  # [N, D, HW]
    flat_labels = labels.flatten(1).long()  # [N, HW]
    fg_classes = torch.arange(1, num_classes, device=labels.device)
    member = flat_labels.unsqueeze(1) == fg_classes.view(1, -1, 1)  # [N, K, HW] foreground classes only
    counts = member.sum(-1)  # [N, K]
    targets = z if target_embeddings is None else F.normalize(target_embeddings.detach().float().flatten(2), dim=1)
    sums = torch.bmm(member.to(z.dtype), targets.transpose(1, 2))  # [N, K, D]
    means = F.normalize(sums / counts.clamp(min=1).unsqueeze(-1), dim=-1)
    present = counts > 0

    # P anchors per class and image: the top-P of random keys among the class's pixels.
    device = generator.device if generator is not None else labels.device
    keys = torch.rand(flat_labels.shape, generator=generator, device=device).to(labels.device).unsqueeze(1)
    if hard_anchors:
        with torch.no_grad():
            own_similarity = torch.einsum("nkd,ndh->nkh", means, z)  # [N, K, HW]
            keys = keys.clamp(min=1e-12).log() / (1.0 - own_similarity).clamp(min=1e-6)
    masked = torch.where(member, keys, torch.full_like(keys, -float("inf")))
    top_values, top_index = masked.topk(min(anchors_per_class, masked.shape[-1]), dim=-1)  # [N, K, P]
    anchor_valid = top_values > -float("inf")
    anchors = torch.gather(z.unsqueeze(1).expand(-1, member.shape[1], -1, -1), 3,
                           top_index.unsqueeze(2).expand(-1, -1, dim, -1))  # [N, K, D, P]
    anchors = anchors.permute(0, 1, 3, 2)  # [N, K, P, D]

    if prototypes is not None:
        vectors, seen = prototypes
        sim = torch.einsum("nkpd,ld->nkpl", anchors, vectors.detach().float()) / temperature  # [N, K, P, K]
        sim = sim.masked_fill(~seen, -1e4)
        positive = sim.diagonal(dim1=1, dim2=3).permute(0, 2, 1)  # [N, K, P]: class c against p_c
        terms = torch.logsumexp(sim, dim=-1) - positive
        term_ok = anchor_valid & seen.view(1, -1, 1)
        total = torch.where(term_ok, terms, torch.zeros_like(terms)).sum()
        count = term_ok.sum()
        return torch.where(count > 0, total / count.clamp(min=1), embeddings.sum() * 0.0)

    first, second = pairs[:, 0], pairs[:, 1]
    total = embeddings.new_zeros(())
    count = embeddings.new_zeros(())
    for own, other in ((first, second), (second, first)):
        a = anchors[own]  # [M, K, P, D]
        candidates = torch.stack([means[own], means[other]], dim=1)  # [M, 2, K, D]
        candidate_ok = torch.stack([present[own], present[other]], dim=1)  # [M, 2, K]
        sim = torch.einsum("mkpd,mjld->mkpjl", a, candidates) / temperature  # [M, K, P, 2, K]
        # A large finite negative, not -inf: rows with no valid candidate must keep finite gradients.
        sim = sim.masked_fill(~candidate_ok[:, None, None], -1e4)
        log_denominator = torch.logsumexp(sim.flatten(-2), dim=-1)  # [M, K, P]
        k = sim.shape[1]
        positive = sim[:, torch.arange(k), :, :, torch.arange(k)]  # [K, M, P, 2]: class c against mu_c^j
        positive = positive.permute(1, 0, 2, 3)  # [M, K, P, 2]
        term_ok = anchor_valid[own].unsqueeze(-1) & candidate_ok.permute(0, 2, 1).unsqueeze(2)  # [M, K, P, 2]
        terms = log_denominator.unsqueeze(-1) - positive
        total = total + torch.where(term_ok, terms, torch.zeros_like(terms)).sum()
        count = count + term_ok.sum()
    # No class to contrast in this batch: 0, keeping the graph (and no host sync to find out).
    return torch.where(count > 0, total / count.clamp(min=1), embeddings.sum() * 0.0)


class PrototypeMemory:
    """One embedding per foreground class, kept across steps (issue 29's momentum-memory candidate):
    each update moves a class's prototype towards the batch's mean embedding of the class, so the
    contrastive loss pulls towards a class's embedding over many batches rather than one pair's mean."""

    def __init__(self, num_classes: int, dim: int, momentum: float, device: torch.device) -> None:
        self.momentum = momentum
        self.vectors = torch.zeros((num_classes - 1, dim), device=device)
        self.seen = torch.zeros(num_classes - 1, dtype=torch.bool, device=device)

    @torch.no_grad()
    def update(self, embeddings: torch.Tensor, labels: torch.Tensor) -> None:
        """embeddings [N, D, H, W] (without gradient: a mean teacher's, say); labels [N, H, W]. A class
        absent from the batch keeps its prototype; a class seen for the first time takes the batch's mean."""
        z = F.normalize(embeddings.float().flatten(2), dim=1)  # [N, D, HW]
        classes = torch.arange(1, self.vectors.shape[0] + 1, device=labels.device)
        member = (labels.flatten(1).long().unsqueeze(1) == classes.view(1, -1, 1)).to(z.dtype)  # [N, K, HW]
        counts = member.sum((0, 2))
        means = F.normalize(torch.einsum("nkh,ndh->kd", member, z) / counts.clamp(min=1).unsqueeze(-1), dim=-1)
        keep = torch.where(self.seen, self.momentum, 0.0).unsqueeze(-1)
        moved = F.normalize(keep * self.vectors + (1 - keep) * means, dim=-1)
        present = counts > 0
        self.vectors = torch.where(present.unsqueeze(-1), moved, self.vectors)
        self.seen = self.seen | present

    def as_pair(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.vectors, self.seen

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"vectors": self.vectors.cpu(), "seen": self.seen.cpu()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.vectors = state["vectors"].to(self.vectors.device, self.vectors.dtype)
        self.seen = state["seen"].to(self.seen.device)
