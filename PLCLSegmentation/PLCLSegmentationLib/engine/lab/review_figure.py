"""A picture of the review screen: the volume to review first, at its least certain slice, beside the review table.

``python -m PLCLSegmentationLib.engine.lab.review_figure PREDICT_DIR OUT.png [--volumes 5]`` reads a
``plcl predict`` (or ``plcl train``) run folder's summary.json, and of the volume the review table
puts first (lowest estimated Dice; with ``--estimate off``, highest uncertainty) its image,
segmentation and uncertainty map. Left: that volume's least certain slice along the summary's
``slice_axis``, shown as the lab's other figures show slices, with the segmentation's outlines in the
class colours, the uncertainty as a translucent heat map and an arrow at the slice's least certain
structure. Right: the review table in its order, the first N volumes with their structures'
estimated Dice (worst first), uncertainty and least certain slice, the shown row highlighted.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError
from ..files.volumes import ClassInfo, Volume, atomic_path, read_annotation, read_volume
from ..method.preprocess import slice_layout
from ..method.quality import AXIS_NAMES
from ..protocol import SUMMARY_FILE
from ..run.summary import review_order
from .figures import _display_slice

#: The figure's size in pixels (width, height): readable in a README at its natural size.
FIGURE_PX = (1400, 600)
DPI = 100
#: Entropy below this is left transparent in the heat map (the confident background).
HEAT_FLOOR = 0.05


def read_summary(folder: Path) -> dict[str, Any]:
    path = folder / SUMMARY_FILE
    if not path.is_file():
        raise InputError(path, "not found; give a plcl predict or plcl train output folder")
    try:
        summary = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as error:
        raise InputError(path, f"is not valid JSON ({error})") from None
    if not isinstance(summary, dict) or not isinstance(summary.get("volumes"), list):
        raise InputError(path, "has no list of volumes; is it a plcl summary.json?")
    return summary


def estimated(summary: dict[str, Any]) -> bool:
    """Whether the run estimated Dice (not ``--estimate off``): the table's order then."""
    return summary.get("estimate") != "off"


def review_choice(summary: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """The volume the review table puts first and its least certain slice (the summary's first slice item,
    None where it lists none): what the figure shows."""
    ranked = review_order(summary["volumes"], estimated(summary))
    if not ranked:
        raise InputError(None, "the summary lists no volume with review data (structures, slices)")
    entry = ranked[0]
    slices = entry.get("slices") or []
    return entry, (slices[0] if slices else None)


def shown_slice(volume: Volume, labels: np.ndarray | None, axis: str, index: int
                ) -> tuple[np.ndarray, np.ndarray | None, float]:
    """The file's slice ``index`` along voxel axis ``axis`` (i, j, k) as the lab's figures display slices:
    (image, labels, row/column pixel aspect)."""
    layout = slice_layout(volume.grid)
    array_axis = AXIS_NAMES.index(axis)
    if layout.axes[0] != array_axis:
        raise InputError(volume.path, f"is sliced across voxel axis {AXIS_NAMES[layout.axes[0]]} here, "
                                      f"but the summary says {axis}")
    count = volume.array.shape[array_axis]
    if not 0 <= index < count:
        raise InputError(volume.path, f"has {count} slices along {axis}; the summary names slice {index}")
    stack_index = count - 1 - index if layout.flips[0] else index
    return _display_slice(volume, labels, stack_index)


def _crop(*masks: np.ndarray, margin: float = 0.8, least: int = 48) -> tuple[slice, slice]:
    """Rows and columns around everything in ``masks`` (with a margin), the whole slice when empty."""
    union = np.logical_or.reduce(masks)
    shape = union.shape
    if not union.any():
        return slice(0, shape[0]), slice(0, shape[1])
    found = []
    for axis in (0, 1):
        hits = np.flatnonzero(union.any(axis=1 - axis))
        low, high = int(hits[0]), int(hits[-1]) + 1
        pad = max(int((high - low) * margin), (least - (high - low)) // 2, 4)
        found.append(slice(max(0, low - pad), min(shape[axis], high + pad)))
    return found[0], found[1]


def _structures_text(entry: dict[str, Any], show_estimates: bool) -> str:
    texts = []
    for s in entry.get("structures", []):
        if show_estimates:
            value = s.get("estimated_dice")
            texts.append(f"{s['name']} " + ("not found" if value is None else f"{value:.2f}"))
        else:
            value = s.get("uncertainty")
            texts.append(f"{s['name']} " + ("not found" if value is None or value >= 1.0 else f"{value:.2f}"))
    return "\n".join(texts)


def _table_rows(ranked: list[dict[str, Any]], show_estimates: bool) -> list[list[str]]:
    rows = []
    for place, entry in enumerate(ranked, start=1):
        slices = entry.get("slices") or []
        where = f"{entry['slice_axis']} = {slices[0]['index']}" if slices else "-"
        rows.append([str(place), entry["name"], _structures_text(entry, show_estimates),
                     f"{entry['uncertainty_score']:.3f}", where])
    return rows


def draw(summary: dict[str, Any], out: Path, volumes: int = 5) -> Path:
    """Read the first volume's files and save the figure as ``out`` (PNG, written atomically)."""
    entry, item = review_choice(summary)
    for key in ("image", "segmentation", "uncertainty"):
        if not entry.get(key):
            raise InputError(None, f"the summary's entry {entry['name']} names no {key} file")
    image = read_volume(entry["image"])
    labels, classes = read_annotation(entry["segmentation"], image)
    classes = classes or [ClassInfo.from_dict(c) for c in summary.get("classes", [])]
    uncertainty = read_volume(entry["uncertainty"])
    if uncertainty.array.shape != image.array.shape:
        raise InputError(uncertainty.path, f"has {uncertainty.array.shape[::-1]} voxels, the image "
                                           f"{image.array.shape[::-1]}")
    axis = entry["slice_axis"]
    index = int(item["index"]) if item else int(np.argmax((labels > 0).sum(axis=tuple(
        a for a in range(3) if a != AXIS_NAMES.index(axis)))))
    picture, outline, aspect = shown_slice(image, labels, axis, index)
    heat = shown_slice(uncertainty, None, axis, index)[0]
    ranked = review_order(summary["volumes"], estimated(summary))
    _render(summary, entry, item, (picture, outline, heat, aspect), classes, ranked[:volumes], len(ranked), out)
    return out


def _render(summary: dict[str, Any], entry: dict[str, Any], item: dict[str, Any] | None,
            shown: tuple[np.ndarray, np.ndarray, np.ndarray, float], classes: list[ClassInfo],
            ranked: list[dict[str, Any]], total: int, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    picture, outline, heat, aspect = shown
    show_estimates = estimated(summary)
    rows, cols = _crop(outline > 0)
    picture, outline, heat = picture[rows, cols], outline[rows, cols], heat[rows, cols]

    fig = plt.figure(figsize=(FIGURE_PX[0] / DPI, FIGURE_PX[1] / DPI), dpi=DPI)
    ax = fig.add_axes((0.01, 0.1, 0.36, 0.78))
    bar = fig.add_axes((0.375, 0.18, 0.01, 0.62))
    table_ax = fig.add_axes((0.44, 0.02, 0.55, 0.86))
    low, high = np.percentile(picture, (1, 99))
    ax.imshow(picture, cmap="gray", vmin=low, vmax=high, aspect=aspect, interpolation="bilinear")
    shown_heat = ax.imshow(np.ma.masked_less(heat, HEAT_FLOOR), cmap="inferno", vmin=0.0, vmax=1.0, alpha=0.55,
                           aspect=aspect, interpolation="nearest")
    handles = []
    for info in classes:
        mask = outline == info.value
        if mask.any():
            ax.contour(mask.astype(float), levels=[0.5], colors=[info.color], linewidths=1.6)
        handles.append(Line2D([], [], color=info.color, linewidth=2.5, label=info.name))
    structure = item.get("structure") if item else None
    value = next((c.value for c in classes if c.name == structure), None)
    if value is not None and (outline == value).any():
        weights = np.where(outline == value, heat + 1e-3, 0.0)
        r, c = (float((np.indices(weights.shape)[a] * weights).sum() / weights.sum()) for a in (0, 1))
        ax.annotate(f"{structure}\nleast certain here", xy=(c, r), xytext=(0.04, 0.93), textcoords="axes fraction",
                    color="white", fontsize=10, fontweight="bold", va="top",
                    arrowprops={"arrowstyle": "->", "color": "white", "linewidth": 1.8})
    ax.set_axis_off()
    ax.legend(handles=handles, loc="lower center", bbox_to_anchor=(0.5, -0.13), ncol=max(1, len(handles)),
              fontsize=9, frameon=False, title="segmentation outlines", title_fontsize=9)
    colorbar = fig.colorbar(shown_heat, cax=bar)
    colorbar.set_label("uncertainty (normalised entropy)", fontsize=9)
    colorbar.ax.tick_params(labelsize=8)
    where = f"slice {entry['slice_axis']} = {item['index']}" if item else "its fullest slice"
    detail = f" (mean uncertainty {item['uncertainty']:.2f})" if item and item.get("uncertainty") is not None else ""
    fig.text(0.195, 0.965, f"Shown first: {entry['name']}, {where}", ha="center", va="top",
             fontsize=12, fontweight="bold")
    fig.text(0.195, 0.915, f"its least certain slice{detail}, uncertainty overlaid", ha="center", va="top",
             fontsize=10)

    table_ax.set_axis_off()
    order = "lowest estimated Dice first" if show_estimates else "most uncertain first"
    measure = "Estimated Dice (worst first)" if show_estimates else "Uncertainty per structure (worst first)"
    fig.text(0.705, 0.965, f"Review table: {order} ({len(ranked)} of {total} volumes)", ha="center", va="top",
             fontsize=12, fontweight="bold")
    fig.text(0.705, 0.915, "the shown volume is highlighted; Next uncertain slice walks this order",
             ha="center", va="top", fontsize=10)
    body = _table_rows(ranked, show_estimates)
    colours = [["#fff2a8" if r == 0 else ("#f4f4f4" if r % 2 else "white")] * 5 for r in range(len(body))]
    table = table_ax.table(cellText=body, colLabels=["#", "Volume", measure, "Uncertainty", "Least certain\nslice"],
                           cellColours=colours or None, colColours=["#dde4ee"] * 5, loc="upper center",
                           cellLoc="left", colLoc="left", colWidths=[0.04, 0.25, 0.4, 0.15, 0.16])
    table.auto_set_font_size(False)
    table.set_fontsize(10)
    lines = max(len(row[2].splitlines()) for row in body) if body else 1
    table.scale(1.0, 1.2 * lines)
    for (r, _), cell in table.get_celld().items():
        cell.set_edgecolor("#b0b0b0")
        if r == 0 or r == 1:
            cell.get_text().set_fontweight("bold")
    _save_small_png(fig, out)
    plt.close(fig)


def _save_small_png(fig: Any, out: Path) -> None:
    """The figure as a PNG of 256 colours (a third of the bytes of a full-colour one), atomically."""
    import io

    from PIL import Image

    buffer = io.BytesIO()
    fig.savefig(buffer, dpi=DPI, format="png")
    buffer.seek(0)
    picture = Image.open(buffer).convert("RGB").quantize(256)
    with atomic_path(out) as tmp:
        picture.save(tmp, format="PNG", optimize=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="review_figure", description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, help="a plcl predict or plcl train output folder")
    parser.add_argument("out", type=Path, help="the PNG to write")
    parser.add_argument("--volumes", type=int, default=5, help="rows of the review table (default 5)")
    args = parser.parse_args(argv)
    if args.volumes < 1:
        parser.error("--volumes must be at least 1")
    try:
        draw(read_summary(args.folder), args.out, args.volumes)
    except InputError as error:  # one line naming the file (the summary where the problem is in it)
        print(f"error: {error if error.path else f'{args.folder / SUMMARY_FILE}: {error}'}", file=sys.stderr)
        return 1
    print(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
