"""The volume curves of a 4D input as a PNG (matplotlib, where installed): a product output of a run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..files.volumes import atomic_path


def volume_curves(curve: dict[str, list[float]], colors: dict[str, tuple[float, float, float]], path: str | Path,
                  time_step: float | None = None, time_unit: str | None = None, title: str | None = None) -> Path:
    """Save each class's volume (ml) over the frames of a sequence as a PNG (written atomically)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    frames = max((len(v) for v in curve.values()), default=0)
    x = np.arange(frames) * (time_step or 1.0)
    fig, ax = plt.subplots(figsize=(6.0, 3.4))
    for name, values in curve.items():
        ax.plot(x[: len(values)], values, marker="o", markersize=3, label=name, color=colors.get(name))
    return _save_volume_axes(fig, ax, path, time_step, time_unit, title, legend_size=8, dpi=100)


def _save_volume_axes(fig: Any, ax: Any, path: str | Path, time_step: float | None, time_unit: str | None,
                      title: str | None, legend_size: int, dpi: int) -> Path:
    """Label a volume-over-time plot and write it as a PNG, atomically."""
    import matplotlib.pyplot as plt

    ax.set_xlabel(f"time ({time_unit})" if time_step and time_unit else "time" if time_step else "frame")
    ax.set_ylabel("volume (ml)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=legend_size, frameon=False)
    if title:
        ax.set_title(title, fontsize=10)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, format="png")
    plt.close(fig)
    return path
