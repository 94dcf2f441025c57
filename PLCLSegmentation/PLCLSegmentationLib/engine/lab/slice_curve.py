"""Mean Dice against the number of annotated slices, from several ``plcl bench`` folders.

``python -m PLCLSegmentationLib.engine.lab.slice_curve FOLDER`` reads ``FOLDER/*/results.json`` (runs of
``plcl bench --labeled-slices K``, with and without ``--as-whole-volumes``, and without the option
for whole annotated cases) and writes ``FOLDER/curve.md`` (a table) and ``FOLDER/curve.png``.
``make bench-slices`` runs the whole curve.
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path
from typing import Any

from ..files.volumes import atomic_path


def curve_rows(folder: Path) -> list[dict[str, Any]]:
    """One row per point of the curve and method, the Dice of its seeds pooled over every bench folder
    that ran that point (a folder per seed, or several seeds in one; a seed run twice counts once)."""
    points: dict[tuple, dict[str, Any]] = {}
    for path in sorted(folder.glob("*/results.json")):
        results = json.loads(path.read_text())
        protocol = results["protocol"]
        variant = ("whole volumes" if protocol.get("as_whole_volumes")
                   else "few slices" if protocol.get("labeled_slices") else "whole cases")
        patients, per_case = protocol.get("n_labeled_patients"), protocol.get("labeled_slices") or "all"
        for run in results["runs"]:
            if run.get("mean_dice") is None:
                continue
            method = run["method"]
            key = (patients, per_case, variant, method)
            point = points.setdefault(key, {"folders": [], "label": results["methods"][method]["label"],
                                            "dice": {}, "slices": {}})
            point["folders"].append(path.parent.name)
            seed = run["seed"]
            point["dice"][seed] = run["mean_dice"]
            point["slices"][seed] = protocol["cases"][str(seed)].get("annotated_slices")
    rows = []
    for (patients, per_case, variant, method), point in points.items():
        dice = list(point["dice"].values())
        slices = [s for s in point["slices"].values() if s is not None]
        rows.append({"folder": ",".join(sorted(set(point["folders"]))), "patients": patients, "per_case": per_case,
                     "variant": variant, "annotated_slices": statistics.mean(slices) if slices else None,
                     "method": method, "label": point["label"], "mean_dice": statistics.mean(dice),
                     "std": statistics.stdev(dice) if len(dice) > 1 else 0.0, "n_seeds": len(dice),
                     "per_seed": dict(sorted(point["dice"].items()))})
    rows.sort(key=lambda r: (r["patients"] or 0, r["method"], r["variant"], r["annotated_slices"] or 0))
    return rows


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = ["| annotated patients | slices per case | annotated as | annotated slices (mean) | method | "
             "mean Dice | seeds | Dice per seed |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        dice = f"{r['mean_dice']:.3f} ± {r['std']:.3f}"
        count = "n/a" if r["annotated_slices"] is None else f"{r['annotated_slices']:.1f}"
        per_seed = ", ".join(f"{seed}: {value:.3f}" for seed, value in r["per_seed"].items())
        lines.append(f"| {r['patients'] or 'chosen'} | {r['per_case']} | {r['variant']} | {count} | {r['label']} | "
                     f"{dice} | {r['n_seeds']} | {per_seed} |")
    return "\n".join(lines) + "\n"


def figure(rows: list[dict[str, Any]], path: Path) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, ax = plt.subplots(figsize=(6, 4))
    groups: dict[tuple, list[tuple[float, float, float]]] = {}
    for r in rows:
        if r["annotated_slices"] is None:
            continue
        # Whole cases are the last point of the few-slices curve.
        variant = "few slices" if r["variant"] == "whole cases" else r["variant"]
        groups.setdefault((r["patients"], r["label"], variant), []).append(
            (r["annotated_slices"], r["mean_dice"], r["std"]))
    for index, ((patients, label, variant), points) in enumerate(sorted(groups.items(), key=str)):
        x, y, spread = zip(*sorted(points))  # error bars: the standard deviation over seeds
        ax.errorbar(x, y, yerr=spread, marker="o", capsize=3, linestyle="-" if variant == "few slices" else "--",
                    color=f"C{index % 10}", label=f"{patients or '?'} patient(s), {label}, {variant}")
    ax.set_xlabel("annotated slices")
    ax.set_ylabel("mean Dice")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_curve(folder: str | Path) -> list[Path]:
    folder = Path(folder)
    rows = curve_rows(folder)
    if not rows:
        raise SystemExit(f"{folder}: no */results.json of plcl bench found")
    with atomic_path(folder / "curve.md") as tmp, open(tmp, "w") as f:
        f.write(markdown(rows))
    written = [folder / "curve.md"]
    png = figure(rows, folder / "curve.png")
    return written + ([png] if png else [])


if __name__ == "__main__":
    for written in write_curve(sys.argv[1] if len(sys.argv) > 1 else "bench_slices"):
        print(written)
