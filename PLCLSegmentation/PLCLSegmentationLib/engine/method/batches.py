"""Training batches, built where the model trains with a few batched tensor operations.

Slices of different sizes are packed once into one zero-bordered canvas on the training device (a
texture atlas), so a whole batch of patches, each through its own rotation, scaling, flip and
elastic deformation, is cut with one ``grid_sample`` for the images and one gather for the labels:
no per-sample Python loop and no host-device copy per step.
"""

from __future__ import annotations

import math
import queue
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F

from ..config import TrainConfig
from .augment import patch_coordinates, random_appearance, random_intensity, random_spatial
from .losses import IGNORE


def position_balanced_weights(positions: torch.Tensor, bins: int = 5) -> torch.Tensor:
    """Drawing chances of slices at ``positions`` (each in [0, 1): where the slice lies in its volume's
    stack) that give every occupied ``bins``-th of the stack the same share of the draws, shared alike
    among its slices."""
    which = (positions * bins).long().clamp(0, bins - 1)
    counts = torch.bincount(which, minlength=bins).float()
    weights = 1.0 / counts[which]
    return weights / weights.sum()


def partial_share_weights(partial: torch.Tensor, share: float, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Drawing chances of annotated slices that give those of partly annotated volumes (``partial``, bool) the
    ``share`` of the draws and the whole volumes' the rest, each group's chances in the proportions of
    ``weights`` (None: alike)."""
    base = torch.ones(len(partial)) if weights is None else weights.to(torch.float64).cpu()
    part = base * partial
    whole = base * ~partial
    return (share * part / part.sum() + (1 - share) * whole / whole.sum()).to(torch.float32)


@dataclass
class SliceAtlas:
    """Every slice of a set in one canvas, with a label per pixel (ground truth or pseudo-label).

    Slices sit on shelves with a one-pixel zero border between neighbours, so bilinear sampling up
    to one pixel outside a slice blends with zeros exactly as ``grid_sample``'s zero padding would;
    samples further out are masked to zero (image) and background (label).
    """

    canvas: torch.Tensor  # [1, C, Hc, Wc] float32 images (C: the network's input channels)
    label_canvas: torch.Tensor  # [Hc, Wc] uint8 labels
    origins: torch.Tensor  # [N, 2] (row, column) of each slice's first pixel in the canvas
    sizes: torch.Tensor  # [N, 2] (height, width)
    foreground: torch.Tensor  # [F, 2] slice-local (row, column) of labelled foreground pixels, by slice
    foreground_start: torch.Tensor  # [N] first row of each slice's pixels in ``foreground``
    foreground_count: torch.Tensor  # [N]

    @classmethod
    def pack(cls, images: Sequence[torch.Tensor], labels: Sequence[torch.Tensor],
             device: torch.device | str = "cpu") -> SliceAtlas:
        """Pack stacks of images ``[S, H, W]`` or ``[S, C, H, W]`` (preprocess.with_neighbours) and their
        labels ``[S, H, W]`` (one stack per volume)."""
        images = [stack[:, None] if stack.dim() == 3 else stack for stack in images]
        channels = images[0].shape[1] if images else 1
        shapes = [tuple(stack.shape[2:]) for stack in images for _ in range(stack.shape[0])]
        origins, canvas_shape = _shelf_pack(shapes)
        canvas = torch.zeros((channels, *canvas_shape), dtype=torch.float32)
        index = 0
        for stack in images:
            for image in stack:
                row, col = origins[index]
                canvas[:, row:row + image.shape[1], col:col + image.shape[2]] = image
                index += 1
        atlas = cls(canvas.to(device)[None], torch.zeros(0, dtype=torch.uint8),
                    torch.tensor(origins, dtype=torch.long, device=device),
                    torch.tensor(shapes, dtype=torch.long, device=device).reshape(-1, 2),
                    torch.zeros((0, 2), dtype=torch.long), torch.zeros(0, dtype=torch.long),
                    torch.zeros(0, dtype=torch.long))
        return atlas.with_labels(labels)

    def with_labels(self, labels: Sequence[torch.Tensor]) -> SliceAtlas:
        """The same slices with new labels (a new round of pseudo-labels), stacks as in ``pack``."""
        device = self.canvas.device
        label_canvas = torch.zeros(self.canvas.shape[-2:], dtype=torch.uint8)
        foreground, counts = [], []
        origins = self.origins.tolist()
        index = 0
        for stack in labels:
            for label in stack:
                row, col = origins[index]
                label_canvas[row:row + label.shape[0], col:col + label.shape[1]] = label
                pixels = torch.nonzero((label > 0) & (label != IGNORE))
                foreground.append(pixels)
                counts.append(len(pixels))
                index += 1
        if index != len(origins):
            raise ValueError(f"{index} label slices for {len(origins)} image slices")
        count = torch.tensor(counts, dtype=torch.long)
        start = torch.cumsum(count, 0) - count
        fg = torch.cat(foreground) if foreground else torch.zeros((0, 2), dtype=torch.long)
        return replace(self, label_canvas=label_canvas.to(device), foreground=fg.to(device),
                       foreground_start=start.to(device), foreground_count=count.to(device))

    def __len__(self) -> int:
        return int(self.sizes.shape[0])

    def sample(self, slices: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """Images [B, C, P, P] (bilinear) and labels [B, P, P] (nearest) of slices ``slices`` [B] at
        slice-local pixel coordinates ``rows``, ``cols`` [B, P, P]."""
        height = self.sizes[slices, 0].view(-1, 1, 1)
        width = self.sizes[slices, 1].view(-1, 1, 1)
        canvas_rows = rows + self.origins[slices, 0].view(-1, 1, 1)
        canvas_cols = cols + self.origins[slices, 1].view(-1, 1, 1)
        canvas_h, canvas_w = self.canvas.shape[-2:]
        # align_corners=False: pixel centre p maps to (2p + 1) / size - 1.
        grid = torch.stack([(2 * canvas_cols + 1) / canvas_w - 1, (2 * canvas_rows + 1) / canvas_h - 1], dim=-1)
        images = F.grid_sample(self.canvas, grid.reshape(1, -1, grid.shape[-2], 2), mode="bilinear",
                               padding_mode="zeros", align_corners=False)
        images = images.reshape(images.shape[1], -1, *rows.shape[1:]).transpose(0, 1)  # [B, C, P, P]
        near = (rows > -1) & (rows < height) & (cols > -1) & (cols < width)
        images = images * near.unsqueeze(1)
        # Nearest labels by one gather from the canvas; outside the slice is background.
        r, c = torch.round(rows).long(), torch.round(cols).long()
        inside = (r >= 0) & (r < height) & (c >= 0) & (c < width)
        flat = (r + self.origins[slices, 0].view(-1, 1, 1)) * canvas_w + c + self.origins[slices, 1].view(-1, 1, 1)
        labels = self.label_canvas.reshape(-1)[torch.where(inside, flat, torch.zeros_like(flat))]
        return images, torch.where(inside, labels, torch.zeros_like(labels))


def _shelf_pack(shapes: list[tuple[int, int]]) -> tuple[list[tuple[int, int]], tuple[int, int]]:
    """Origins of rectangles on shelves of a near-square canvas, tallest first, one-pixel borders
    (a near-square canvas keeps normalised coordinates precise to ~1e-3 pixel in float32)."""
    if not shapes:
        return [], (1, 1)
    area = sum((h + 1) * (w + 1) for h, w in shapes)
    width = max(max(w for _, w in shapes) + 2, math.ceil(math.sqrt(area)))
    origins: list[tuple[int, int]] = [(0, 0)] * len(shapes)
    row, col, shelf = 1, 1, 0
    for index in sorted(range(len(shapes)), key=lambda i: -shapes[i][0]):
        h, w = shapes[index]
        if col + w + 1 > width:
            row, col, shelf = row + shelf + 1, 1, 0
        origins[index] = (row, col)
        col += w + 1
        shelf = max(shelf, h)
    return origins, (row + shelf + 1, width)


@dataclass
class Batch:
    images: torch.Tensor  # [B, C, P, P]
    labels: torch.Tensor  # uint8 [B, P, P]
    contrastive_images: torch.Tensor | None = None  # [2N, C, P, P]: N slices, then their second views
    contrastive_labels: torch.Tensor | None = None  # [2N, P, P]
    pairs: torch.Tensor | None = None  # [M, 2] indices into the contrastive images
    #: With online pseudo-labels: the unannotated contrastive slices before any appearance change
    #: [U, C, P, P]; they are slices ``unannotated_from`` to N - 1 of each view.
    weak_images: torch.Tensor | None = None
    unannotated_from: int = 0

    @property
    def slices(self) -> int:
        return self.images.shape[0] + (0 if self.contrastive_images is None else self.contrastive_images.shape[0])


class BatchMaker:
    """Draws segmentation batches from annotated slices and, in the joint stage, contrastive
    batches from annotated and pseudo-labelled slices, on the atlases' device."""

    def __init__(self, config: TrainConfig, annotated: SliceAtlas, pseudo: SliceAtlas | None, seed: int,
                 annotated_weights: torch.Tensor | None = None, online_labels: bool | None = None) -> None:
        self.config = config
        #: Whether joint batches carry the unannotated patches' weak views for the teacher to label them
        #: (config.online_pseudo_labels unless told).
        self.online_labels = config.online_pseudo_labels if online_labels is None else online_labels
        self.annotated = annotated
        #: Chances of the annotated slices to be drawn (position_balanced_weights); None: all alike.
        self.annotated_weights = None if annotated_weights is None else annotated_weights.to(annotated.canvas.device)
        self.pseudo = pseudo if pseudo is not None and len(pseudo) else None
        self.device = annotated.canvas.device
        self.generator = torch.Generator(device=self.device).manual_seed(seed)
        n = config.contrastive_images
        self.n_annotated = max(1, n // 3)
        self.pairs = contrastive_pairs(self.n_annotated, n).to(self.device)

    def _centres(self, atlas: SliceAtlas, slices: torch.Tensor) -> torch.Tensor:
        """Patch centres [B, 2]: a jittered foreground pixel for a share of the patches (where the
        slice has foreground), else uniform over the slice."""
        g, count = self.generator, slices.shape[0]
        size = atlas.sizes[slices].float()
        uniform = torch.rand((count, 2), generator=g, device=self.device) * (size - 1)
        fg_count = atlas.foreground_count[slices]
        want = torch.rand(count, generator=g, device=self.device) < self.config.foreground_patch_fraction
        pick = (torch.rand(count, generator=g, device=self.device) * fg_count).long()
        pick = torch.minimum(pick, (fg_count - 1).clamp(min=0)) + atlas.foreground_start[slices]
        if len(atlas.foreground):
            pixel = atlas.foreground[pick.clamp(max=len(atlas.foreground) - 1)].float()
        else:
            pixel = uniform
        jitter = (torch.rand((count, 2), generator=g, device=self.device) * 2 - 1) * (self.config.patch_size / 4)
        use_fg = (want & (fg_count > 0)).unsqueeze(1)
        return torch.where(use_fg, pixel + jitter, uniform)

    def draw_indices(self, atlas: SliceAtlas, count: int) -> torch.Tensor:
        """``count`` slices of ``atlas``, drawn with replacement (the annotated ones by their weights)."""
        if atlas is self.annotated and self.annotated_weights is not None:
            return torch.multinomial(self.annotated_weights, count, replacement=True, generator=self.generator)
        return torch.randint(len(atlas), (count,), generator=self.generator, device=self.device)

    def draw(self, atlas: SliceAtlas, count: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``count`` augmented patches (images [B, C, P, P], labels uint8 [B, P, P])."""
        patch = self.config.patch_size
        slices = self.draw_indices(atlas, count)
        params = random_spatial(self.config, count, patch, self.generator)
        rows, cols = patch_coordinates(self._centres(atlas, slices), patch, params)
        return atlas.sample(slices, rows, cols)

    def segmentation_batch(self) -> Batch:
        x, y = self.draw(self.annotated, self.config.batch_size)
        if self.config.augmentation == "strong":
            x = random_appearance(x, self.config, self.generator)
        return Batch(x, y)

    def joint_batch(self) -> Batch:
        if self.pseudo is None:
            return self.segmentation_batch()
        batch_size, n, n_annotated = self.config.batch_size, self.config.contrastive_images, self.n_annotated
        x, y = self.draw(self.annotated, batch_size + n_annotated)
        xu, yu = self.draw(self.pseudo, n - n_annotated)
        segmentation = x[:batch_size]
        if self.config.augmentation == "strong":
            segmentation = random_appearance(segmentation, self.config, self.generator)
        contrast = torch.cat([x[batch_size:], xu])
        # Two intensity views of each slice: the same anatomy, different appearance.
        views = torch.cat([random_intensity(contrast, self.config, self.generator),
                           random_intensity(contrast, self.config, self.generator)])
        labels = torch.cat([y[batch_size:], yu])
        weak = xu if self.online_labels else None
        return Batch(segmentation, y[:batch_size], views, torch.cat([labels, labels]), self.pairs, weak, n_annotated)


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

    torch releases the GIL inside its kernels, so building overlaps with the training step where a
    core is free for it. The order of batches is that of the single producer, so a seed gives the
    same run.
    """

    def __init__(self, make: Callable[[], Batch], depth: int = 3, enabled: bool = True) -> None:
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


__all__ = ["SliceAtlas", "Batch", "BatchMaker", "BackgroundBatches", "contrastive_pairs"]
