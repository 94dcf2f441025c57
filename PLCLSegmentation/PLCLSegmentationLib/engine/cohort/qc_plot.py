"""The QC page of ``plcl cohort collect`` (needs matplotlib): the distribution of every measure,
and the cases to look at first (values far from the cohort's, the least certain)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..files.volumes import atomic_path

#: Cases listed on the page.
SHOWN = 15


def qc_page(collected: dict[str, Any], path: Path, title: str) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    table, numeric = collected["table"], collected["numeric"]
    shown = [i for i, name in enumerate(numeric) if np.isfinite(table[:, i]).any()] if len(table) else []
    panels = len(shown) + 1
    columns = 3
    rows = (panels + columns - 1) // columns
    figure, axes = plt.subplots(rows, columns, figsize=(5 * columns, 3.4 * rows), squeeze=False)
    for axis, index in zip(axes.flat, shown):
        data = table[:, index]
        axis.hist(data[np.isfinite(data)], bins=min(40, max(5, int(np.sqrt(len(data))))), color="#4a7ab5")
        axis.set_title(numeric[index], fontsize=10)
    text_axis = axes.flat[len(shown)]
    text_axis.axis("off")
    names = collected["names"]
    score = table[:, numeric.index("uncertainty_score")] if len(table) else np.zeros(0)
    position = {name: i for i, name in enumerate(names)}
    order = sorted(collected["flags"], key=lambda n: (-len(collected["flags"][n]), -score[position[n]]))
    lines = [f"{n}: {'; '.join(collected['flags'][n])}" for n in order[:SHOWN]] or ["nothing stands out"]
    text_axis.text(0, 1, "Look at first:\n" + "\n".join(line[:70] for line in lines), va="top", family="monospace",
                   fontsize=7)
    for axis in list(axes.flat)[len(shown) + 1:]:
        axis.axis("off")
    figure.suptitle(f"{title}: {collected['rows']} inputs")
    figure.tight_layout()
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=90)
    plt.close(figure)
    return path
