"""Pictures for people: slices with their segmentations overlaid (demo, docs, benchmark).

matplotlib is needed only here, and only when a picture is asked for.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..files.volumes import ClassInfo, Volume
from ..method.preprocess import slice_layout
from ..run.curve_plot import _save_volume_axes


@dataclass
class Panel:
    title: str
    volume: Volume
    labels: np.ndarray | None  # class values [k, j, i], or None for the image alone


def _display_slice(volume: Volume, labels: np.ndarray | None, index: int | None) -> tuple[np.ndarray, ...]:
    layout = slice_layout(volume.grid)
    image = layout.to_stack(volume.array)
    stack = None if labels is None else layout.to_stack(labels)
    if index is None:
        index = int(np.argmax((stack > 0).sum(axis=(1, 2)))) if stack is not None else image.shape[0] // 2
    row_mm, col_mm = layout.in_plane_spacing
    return image[index], (None if stack is None else stack[index]), row_mm / col_mm


def best_slice(volume: Volume, labels: np.ndarray) -> int:
    """The slice (in the engine's slicing) with the most labelled pixels."""
    stack = slice_layout(volume.grid).to_stack(labels)
    return int(np.argmax((stack > 0).sum(axis=(1, 2))))


def overlay_grid(rows: Sequence[Sequence[Panel]], classes: Sequence[ClassInfo], path: str | Path,
                 slice_index: Sequence[int | None] | None = None, title: str | None = None) -> Path:
    """Save a grid of panels (rows x columns) as a PNG; each row shows one slice of its volumes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    n_rows, n_cols = len(rows), max(len(r) for r in rows)
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(2.6 * n_cols, 2.6 * n_rows + (0.5 if title else 0.2)),
                             squeeze=False)
    max_value = max([c.value for c in classes] + [1])
    colors = np.zeros((max_value + 1, 4))
    for c in classes:
        colors[c.value] = (*c.color, 0.55)
    cmap = ListedColormap(colors)
    for r, row in enumerate(rows):
        index = None if slice_index is None else slice_index[r]
        for c in range(n_cols):
            ax = axes[r][c]
            ax.axis("off")
            if c >= len(row):
                continue
            panel = row[c]
            image, labels, aspect = _display_slice(panel.volume, panel.labels, index)
            low, high = np.percentile(image, (1, 99))
            ax.imshow(image, cmap="gray", vmin=low, vmax=high, aspect=aspect, interpolation="bilinear")
            if labels is not None:
                ax.imshow(np.ma.masked_equal(labels, 0), cmap=cmap, vmin=0, vmax=max_value, aspect=aspect,
                          interpolation="nearest")
            ax.set_title(panel.title, fontsize=8)
    handles = [Patch(color=(*c.color, 0.8), label=c.name) for c in classes]
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=8, frameon=False)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0.05, 1, 1), h_pad=1.5)
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path




def volume_curves_against_truth(curves: dict[str, tuple[list[float], list[float], float, float | None]],
                                path: str | Path, time_step: float | None = None, time_unit: str | None = None,
                                title: str | None = None) -> Path:
    """Known (solid) and predicted (dashed, dots) volume curves of each structure, with both
    ejection fractions in the legend: {structure: (known ml, predicted ml, known EF, predicted EF)}."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    for index, (name, (known, predicted, known_ef, predicted_ef)) in enumerate(curves.items()):
        color = f"C{index}"
        x = np.arange(len(known)) * (time_step or 1.0)
        ax.plot(x, known, color=color, linewidth=2.0, label=f"{name}, known (EF {known_ef:.1f} %)")
        estimate = "-" if predicted_ef is None else f"{predicted_ef:.1f} %"
        ax.plot(x[: len(predicted)], predicted, color=color, linestyle="--", marker="o", markersize=3,
                label=f"{name}, predicted (EF {estimate})")
    return _save_volume_axes(fig, ax, path, time_step, time_unit, title, legend_size=7, dpi=110)


