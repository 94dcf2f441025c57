"""The QC page of ``plcl cohort collect`` (needs matplotlib): per structure, the distribution of its
volumes (ml; end-diastole, end-systole and ejection fraction of sequences) beside that of its
estimated Dice; the uncertainty scores; and the cases to look at first (lowest estimated Dice, then
least certain), with why ``collect`` flagged them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..files.volumes import atomic_path

#: Cases listed on the page.
SHOWN = 15

#: A structure's measures in the table (column suffix), what the page calls them, and their unit.
MEASURES = (("ml", "volume", "ml"), ("ed_ml", "end-diastole (largest volume)", "ml"),
            ("es_ml", "end-systole (smallest volume)", "ml"), ("ef_percent", "ejection fraction", "%"))
ESTIMATE = "dice_est_"


def words(column: str, classes: list[str]) -> str:
    """A column of the cohort table as the page writes it: 'left ventricle volume', not 'left ventricle_ml'."""
    if column == "uncertainty_score":
        return "uncertainty score"
    for c in classes:
        if column == f"{ESTIMATE}{c}":
            return f"{c} estimated Dice"
        for suffix, what, _ in MEASURES:
            if column == f"{c}_{suffix}":
                return f"{c} {what}"
    return column


def panels(collected: dict[str, Any]) -> list[list[tuple[int, str, str]]]:
    """One row per structure: (column of the table, title, axis title) of each measure with values,
    its estimated Dice last."""
    table, numeric, classes = collected["table"], collected["numeric"], collected["classes"]

    def has_values(column: str) -> bool:
        return column in numeric and len(table) > 0 and bool(np.isfinite(table[:, numeric.index(column)]).any())

    rows = []
    for c in classes:
        row = [(numeric.index(f"{c}_{suffix}"), f"{c}: {what}", unit)
               for suffix, what, unit in MEASURES if has_values(f"{c}_{suffix}")]
        if has_values(f"{ESTIMATE}{c}"):
            row.append((numeric.index(f"{ESTIMATE}{c}"), f"{c}: estimated Dice", "estimated Dice"))
        if row:
            rows.append(row)
    return rows


def look_first(collected: dict[str, Any], count: int = SHOWN) -> list[tuple[str, float, str, float, list[str]]]:
    """The cases to look at first: (name, lowest estimated Dice, its structure, uncertainty score, why flagged),
    lowest estimated Dice first, then least certain. Where the table holds no estimate at all (an engine
    before them) the order is by uncertainty alone; a case with no structure estimated (none found) comes
    first, as in a run's summary."""
    table, numeric, classes, names = collected["table"], collected["numeric"], collected["classes"], collected["names"]
    if not len(table):
        return []
    score = table[:, numeric.index("uncertainty_score")]
    estimated = [c for c in classes if f"{ESTIMATE}{c}" in numeric]
    estimates = table[:, [numeric.index(f"{ESTIMATE}{c}") for c in estimated]]
    any_estimate = bool(np.isfinite(estimates).any())
    cases = []
    for i, name in enumerate(names):
        found = np.isfinite(estimates[i])
        if found.any():
            worst = int(np.nanargmin(np.where(found, estimates[i], np.inf)))
            lowest, structure = float(estimates[i, worst]), estimated[worst]
        else:
            lowest, structure = float("nan"), ""
        key = (-1.0 if np.isnan(lowest) else lowest) if any_estimate else 0.0
        cases.append((key, -np.nan_to_num(score[i], nan=-1.0), name, lowest, structure, float(score[i])))
    cases.sort()
    flags = collected["flags"]
    return [(name, lowest, structure, uncertainty, [_flag_words(f, classes) for f in flags.get(name, [])])
            for _, _, name, lowest, structure, uncertainty in cases[:count]]


def _flag_words(flag: str, classes: list[str]) -> str:
    column, _, rest = flag.rpartition(" high " if " high (" in flag else " low ")
    if not column:
        return flag
    return f"{words(column, classes)} {'high' if ' high (' in flag else 'low'} {rest}"


def look_first_text(collected: dict[str, Any], width: int, count: int = SHOWN) -> str:
    cases = look_first(collected, count)
    if not cases:
        return "Look at first: no inputs done yet"
    name_width = max(len("input"), *(len(c[0]) for c in cases))
    lines = [f"Look at first (lowest estimated Dice, then least certain; {len(cases)} of {collected['rows']}):",
             f"{'input':<{name_width}}  est. Dice  structure         uncertainty  why"]
    for name, lowest, structure, uncertainty, why in cases:
        dice = "none" if np.isnan(lowest) else f"{lowest:.3f}"
        line = f"{name:<{name_width}}  {dice:>9}  {structure[:16]:<16}  {uncertainty:>11.3f}  {'; '.join(why)}"
        lines.append(line if len(line) <= width else line[:width - 3] + "...")
    shown = {c[0] for c in cases}
    others = sum(1 for n in collected["flags"] if n not in shown)
    if others:
        lines.append(f"and {others} other flagged input{'s' * (others > 1)}: the review column of cohort.csv")
    return "\n".join(lines)


def qc_page(collected: dict[str, Any], path: Path, title: str) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    table, numeric = collected["table"], collected["numeric"]
    rows = panels(collected)
    columns = max([2, *(len(r) for r in rows)])
    width = max(10.8, 3.6 * columns)
    figure = plt.figure(figsize=(width, 2.5 * len(rows) + 3.4), constrained_layout=True)
    grid = figure.add_gridspec(len(rows) + 1, columns, height_ratios=[2.5] * len(rows) + [3.4])
    bins = min(40, max(10, int(2 * np.sqrt(len(table)))))
    for r, row in enumerate(rows):
        for k, (index, name, unit) in enumerate(row):
            _histogram(figure.add_subplot(grid[r, k]), table[:, index], bins, name, unit)
    score = table[:, numeric.index("uncertainty_score")] if len(table) else np.zeros(0)
    _histogram(figure.add_subplot(grid[len(rows), 0]), score, bins, "uncertainty score", "uncertainty score (0 to 1)")
    text_axis = figure.add_subplot(grid[len(rows), 1:])
    text_axis.axis("off")
    characters = int(width * (columns - 1) / columns * 72 / (8 * 0.6))  # of 8 pt monospace across the panel
    text_axis.text(0, 1, look_first_text(collected, characters), va="top", family="monospace", fontsize=8)
    figure.suptitle(f"{title}: {collected['rows']} inputs")
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=90)
    plt.close(figure)
    return path


def _histogram(axis: Any, data: np.ndarray, bins: int, title: str, unit: str) -> None:
    data = data[np.isfinite(data)]
    axis.hist(data, bins=bins, color="#4a7ab5")
    if len(data):
        axis.axvline(float(np.median(data)), color="#333333", linewidth=1, linestyle="--")
    axis.set_title(title, fontsize=10)
    axis.set_xlabel(unit, fontsize=9)
    axis.set_ylabel("inputs", fontsize=9)
    axis.tick_params(labelsize=8)
