"""From a volume on any grid to the network's slices, and back.

A volume is turned into a stack of 2D slices without resampling across slices:
1. its array axes are permuted and flipped to the nearest canonical LPS orientation (exact, lossless),
2. it is sliced along its coarsest axis (the acquisition's slice direction for anisotropic scans),
   with the in-plane axes turned (90-degree steps, transposes) to match a reference frame, the
   first annotated volume's, so oblique stacks on either side of a canonical boundary are neither
   rotated by 90 degrees nor mirrored against each other,
3. each slice is resampled in-plane to the target pixel size,
4. intensities are min-max normalised between two percentiles of the volume.
``SliceLayout`` remembers steps 1-3 so predictions are mapped back onto the volume's exact grid.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F

from ..files.volumes import Grid, Volume
from ..slicing import canonical

#: World directions (LPS unit vectors) of a stack's rows and columns: the in-plane frame.
InPlaneFrame = tuple[tuple[float, float, float], tuple[float, float, float]]


@dataclass(frozen=True)
class SliceLayout:
    """How a volume array ``[k, j, i]`` maps to a slice stack ``[slice, row, column]``."""

    axes: tuple[int, int, int]  # array axes taken as (slice, row, column)
    flips: tuple[bool, bool, bool]  # flips applied after the transpose
    native_shape: tuple[int, int, int]  # stack shape before in-plane resampling
    in_plane_spacing: tuple[float, float]  # (row, column) pixel size in mm
    slice_spacing: float

    def to_stack(self, array: np.ndarray) -> np.ndarray:
        stack = np.transpose(array, self.axes)
        flip_axes = tuple(axis for axis, flip in enumerate(self.flips) if flip)
        return np.flip(stack, flip_axes) if flip_axes else stack

    def from_stack(self, stack: np.ndarray) -> np.ndarray:
        flip_axes = tuple(axis for axis, flip in enumerate(self.flips) if flip)
        if flip_axes:
            stack = np.flip(stack, flip_axes)
        return np.ascontiguousarray(np.transpose(stack, np.argsort(self.axes)))

    def resampled_shape(self, target_spacing: float) -> tuple[int, int]:
        _, rows, cols = self.native_shape
        row_mm, col_mm = self.in_plane_spacing
        return max(1, round(rows * row_mm / target_spacing)), max(1, round(cols * col_mm / target_spacing))


def slice_layout(grid: Grid, reference: InPlaneFrame | None = None) -> SliceLayout:
    """Nearest canonical orientation, then the coarsest axis as the slice axis (ties: the S axis);
    with a ``reference``, the in-plane axes turned to match it (see ``_aligned``)."""
    found = canonical(grid.direction_matrix, grid.spacing)
    canonical_axes, canonical_flip, canonical_spacing = found.axes, found.flips, found.spacing
    slice_pos = found.slice_position
    order = [slice_pos] + [p for p in range(3) if p != slice_pos]
    size_kji = grid.size[::-1]
    axes = tuple(canonical_axes[p] for p in order)
    layout = SliceLayout(
        axes=axes,
        flips=tuple(canonical_flip[p] for p in order),
        native_shape=tuple(int(size_kji[a]) for a in axes),
        in_plane_spacing=(canonical_spacing[order[1]], canonical_spacing[order[2]]),
        slice_spacing=canonical_spacing[order[0]],
    )
    return layout if reference is None else _aligned(layout, grid, reference)


def in_plane_frame(layout: SliceLayout, grid: Grid) -> InPlaneFrame:
    """World directions of the stack's rows and columns."""
    direction = grid.direction_matrix  # column a: world direction of ITK index axis a = array axis 2 - a
    row, column = ((direction[:, 2 - axis] * (-1.0 if flip else 1.0)).tolist()
                   for axis, flip in zip(layout.axes[1:], layout.flips[1:]))
    return tuple(row), tuple(column)


def _aligned(layout: SliceLayout, grid: Grid, reference: InPlaneFrame) -> SliceLayout:
    """Of the eight in-plane orientations (two axis orders, two flips each), the one whose rows and
    columns point most nearly along the reference's. The default wins ties, so volumes oriented like
    the reference keep exactly the layout they would have without one."""
    reference_row, reference_column = (np.asarray(v, dtype=float) for v in reference)
    best, best_score = layout, -np.inf
    for swap, flip_row, flip_column in itertools.product((False, True), repeat=3):
        order = (2, 1) if swap else (1, 2)
        candidate = replace(
            layout,
            axes=(layout.axes[0], *(layout.axes[i] for i in order)),
            flips=(layout.flips[0], layout.flips[order[0]] ^ flip_row, layout.flips[order[1]] ^ flip_column),
            native_shape=(layout.native_shape[0], *(layout.native_shape[i] for i in order)),
            in_plane_spacing=tuple(layout.in_plane_spacing[i - 1] for i in order),
        )
        row, column = in_plane_frame(candidate, grid)
        score = float(np.dot(row, reference_row) + np.dot(column, reference_column))
        if score > best_score + 1e-6:
            best, best_score = candidate, score
    return best


def normalise(array: np.ndarray, percentiles: tuple[float, float]) -> tuple[np.ndarray, bool]:
    """Min-max between two percentiles, clipped to [0, 1]. Returns (array, False) for a constant image."""
    sample = array.ravel()
    if sample.size > 4_000_000:  # percentiles of a large volume from a regular subsample
        sample = sample[:: sample.size // 2_000_000]
    low, high = np.percentile(sample, percentiles)
    if not high > low:
        return np.zeros_like(array, dtype=np.float32), False
    return np.clip((array - low) / (high - low), 0.0, 1.0).astype(np.float32), True


def input_channels(context: int) -> int:
    """The network's input channels with ``context`` neighbouring slices a side (with_neighbours)."""
    return 2 * context + 1


def with_neighbours(stack: torch.Tensor, context: int) -> torch.Tensor:
    """The network's input for a stack of slices [S, H, W]: [S, 2 * context + 1, H, W], channel ``context``
    the slice itself and the others its neighbours in order, zero beyond the stack's ends (like a 3D
    network's zero padding, so an end slice is told apart from one in the middle). A whole volume's stack:
    frames of a 4D image are stacked one by one, never across."""
    if context == 0:
        return stack[:, None]
    padded = F.pad(stack, (0, 0, 0, 0, context, context))
    return torch.stack([padded[k:k + stack.shape[0]] for k in range(input_channels(context))], dim=1)


def resample_stack(stack: np.ndarray, shape: tuple[int, int], is_label: bool = False,
                   num_classes: int = 0) -> torch.Tensor:
    """Resample every slice of a [S, H, W] stack to ``shape`` (bilinear; labels through their one-hot)."""
    tensor = torch.from_numpy(np.ascontiguousarray(stack))
    if tuple(stack.shape[1:]) == tuple(shape):
        return tensor.clone()
    if not is_label:
        down = shape[0] < stack.shape[1] or shape[1] < stack.shape[2]
        return F.interpolate(tensor[:, None].float(), size=shape, mode="bilinear", align_corners=False,
                             antialias=down)[:, 0]
    out = torch.empty((stack.shape[0], *shape), dtype=torch.uint8)
    for index in range(stack.shape[0]):  # slice by slice: one-hot of a whole volume can be large
        one_hot = F.one_hot(tensor[index].long(), num_classes).permute(2, 0, 1)[None].float()
        out[index] = F.interpolate(one_hot, size=shape, mode="bilinear", align_corners=False)[0].argmax(0)
    return out


def resize_probabilities(probs: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """[S, C, h, w] -> [S, C, H, W], the inverse of ``resample_stack``'s in-plane mapping."""
    if tuple(probs.shape[-2:]) == tuple(shape):
        return probs
    return F.interpolate(probs, size=shape, mode="bilinear", align_corners=False)


@dataclass
class PreparedVolume:
    """A volume as the network sees it: normalised, resampled slices (and labels, if any)."""

    volume: Volume
    layout: SliceLayout
    images: torch.Tensor  # float32 [S, H, W]
    labels: torch.Tensor | None = None  # uint8 [S, H, W], class indices
    #: bool [S]: the slices whose labels are annotations; None: every slice (see slicing.py). The
    #: others are neither background nor foreground: trained on like unannotated slices.
    annotated: torch.Tensor | None = None

    @property
    def partial(self) -> bool:
        """Annotated, but only on some of its slices."""
        return self.annotated is not None and not bool(self.annotated.all())


def stack_mask(layout: SliceLayout, file_slices: list[int]) -> torch.Tensor:
    """The bool [S] mask, in stack order, of slices given by their index in the file (slicing.py)."""
    count = layout.native_shape[0]
    mask = torch.zeros(count, dtype=torch.bool)
    mask[torch.tensor(file_slices, dtype=torch.long)] = True
    return mask.flip(0) if layout.flips[0] else mask


def prepare_volume(volume: Volume, target_spacing: float, percentiles: tuple[float, float],
                   labels: np.ndarray | None = None, num_classes: int = 0,
                   reference: InPlaneFrame | None = None) -> tuple[PreparedVolume, bool]:
    """Returns the prepared volume and whether its intensities had any contrast."""
    layout = slice_layout(volume.grid, reference)
    normalised, has_contrast = normalise(volume.array, percentiles)
    shape = layout.resampled_shape(target_spacing)
    images = resample_stack(layout.to_stack(normalised), shape)
    label_stack = None
    if labels is not None:
        label_stack = resample_stack(layout.to_stack(labels), shape, is_label=True, num_classes=num_classes)
    return PreparedVolume(volume, layout, images.contiguous(), label_stack), has_contrast
