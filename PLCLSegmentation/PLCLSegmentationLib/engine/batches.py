"""Training batches: which slices and where, built off the training thread."""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch

from .augment import SpatialParams, cut_patches, random_appearance, random_intensity, random_spatial, sampling_grid
from .config import TrainConfig
from .losses import IGNORE


@dataclass
class SliceSet:
    """Slices with a label per pixel (ground truth or pseudo-label) and their foreground pixels."""

    images: list[torch.Tensor]  # [H, W] each
    labels: list[torch.Tensor]  # uint8 [H, W] each
    foreground: list[torch.Tensor]  # [F, 2] (row, column) of labelled foreground pixels

    @classmethod
    def from_stacks(cls, images: Sequence[torch.Tensor], labels: Sequence[torch.Tensor]) -> SliceSet:
        out = cls([], [], [])
        for image_stack, label_stack in zip(images, labels):
            for image, label in zip(image_stack, label_stack):
                out.images.append(image)
                out.labels.append(label)
                out.foreground.append(torch.nonzero((label > 0) & (label != IGNORE)))
        return out

    def __len__(self) -> int:
        return len(self.images)


@dataclass
class Batch:
    images: torch.Tensor  # [B, 1, P, P]
    labels: torch.Tensor  # uint8 [B, P, P]
    contrastive_images: torch.Tensor | None = None  # [2N, 1, P, P]: N slices, then their second views
    contrastive_labels: torch.Tensor | None = None  # [2N, P, P]
    pairs: torch.Tensor | None = None  # [M, 2] indices into the contrastive images


class BatchMaker:
    """Draws segmentation batches from annotated slices and, in the joint stage, contrastive
    batches from annotated and pseudo-labelled slices."""

    def __init__(self, config: TrainConfig, annotated: SliceSet, pseudo: SliceSet | None, seed: int) -> None:
        self.config = config
        self.annotated = annotated
        self.pseudo = pseudo if pseudo is not None and len(pseudo) else None
        self.generator = torch.Generator().manual_seed(seed)

    def _centre(self, slices: SliceSet, index: int) -> tuple[float, float]:
        g = self.generator
        height, width = slices.images[index].shape
        fg = slices.foreground[index]
        if len(fg) and float(torch.rand((), generator=g)) < self.config.foreground_patch_fraction:
            row, col = fg[int(torch.randint(len(fg), (), generator=g))].tolist()
            jitter = self.config.patch_size / 4
            row += float(torch.empty(()).uniform_(-jitter, jitter, generator=g))
            col += float(torch.empty(()).uniform_(-jitter, jitter, generator=g))
            return row, col
        return float(torch.rand((), generator=g)) * (height - 1), float(torch.rand((), generator=g)) * (width - 1)

    def _draw(self, slices: SliceSet, count: int) -> tuple[torch.Tensor, torch.Tensor]:
        patch = self.config.patch_size
        indices = torch.randint(len(slices), (count,), generator=self.generator).tolist()
        grids = [sampling_grid(self._centre(slices, i), tuple(slices.images[i].shape), patch,
                               random_spatial(self.config, patch, self.generator)) for i in indices]
        x, y = cut_patches([slices.images[i] for i in indices], [slices.labels[i] for i in indices], grids)
        return x, y

    def segmentation_batch(self) -> Batch:
        x, y = self._draw(self.annotated, self.config.batch_size)
        if self.config.augmentation == "strong":
            x = random_appearance(x, self.config, self.generator)
        return Batch(x, y)

    def joint_batch(self) -> Batch:
        batch = self.segmentation_batch()
        if self.pseudo is None:
            return batch
        n = self.config.contrastive_images
        n_annotated = max(1, n // 3)
        xa, ya = self._draw(self.annotated, n_annotated)
        xu, yu = self._draw(self.pseudo, n - n_annotated)
        x, y = torch.cat([xa, xu]), torch.cat([ya, yu])
        # Two intensity views of each slice: the same anatomy, different appearance.
        views = torch.cat([random_intensity(x, self.config, self.generator),
                           random_intensity(x, self.config, self.generator)])
        batch.contrastive_images = views
        batch.contrastive_labels = torch.cat([y, y])
        batch.pairs = contrastive_pairs(n_annotated, n)
        return batch


def contrastive_pairs(n_annotated: int, n: int) -> torch.Tensor:
    """Pairs of the method: each slice with its second view; annotated with unannotated slices;
    unannotated with unannotated. Index i + n is the second view of slice i."""
    pairs = [(i, i + n) for i in range(n)]
    unannotated = list(range(n_annotated, n))
    pairs += [(a, u + n) for a, u in zip(range(n_annotated), unannotated)]
    pairs += [(u, v + n) for u, v in zip(unannotated, unannotated[1:])]
    return torch.tensor(pairs, dtype=torch.long)


class BackgroundBatches:
    """Builds batches in a daemon thread while the model trains on the previous one.

    torch releases the GIL inside its kernels, so sampling overlaps with the training step. The
    order of batches is that of the single producer, so a seed gives the same run.
    """

    def __init__(self, make: callable, depth: int = 3, enabled: bool = True) -> None:
        self.make = make
        self.enabled = enabled
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if enabled:
            self._thread = threading.Thread(target=self._run, name="plcl-batches", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                item = self.make()
                while not self._stop.is_set():
                    try:
                        self._queue.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
        except BaseException as error:  # surface in the training thread
            self._queue.put(error)

    def __iter__(self) -> Iterator[Batch]:
        return self

    def __next__(self) -> Batch:
        if not self.enabled:
            return self.make()
        item = self._queue.get()
        if isinstance(item, BaseException):
            raise item
        return item

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)


__all__ = ["SliceSet", "Batch", "BatchMaker", "BackgroundBatches", "SpatialParams", "contrastive_pairs"]
