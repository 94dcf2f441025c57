"""How far the engine's estimated Dice can be trusted: the estimates of summary.json against the true
Dice of ``plcl evaluate`` on the evaluation split (``plcl bench``'s quality table and figure).

Per volume and structure: Spearman's rank correlation between estimated and true Dice, the mean
absolute error, and how many of the truly worst 10 % the estimate's worst 10 % hold; the same catch
for whole volumes (their structures' mean Dice). A structure predicted nowhere has the estimate 0;
one absent from both the prediction and the reference (true Dice undefined) is left out.
"""

from __future__ import annotations

import math
import statistics
from pathlib import Path
from typing import Any

import numpy as np

from ..files.volumes import atomic_path

#: The share of the worst cases the estimate must find.
WORST_SHARE = 0.1


def quality_pairs(summary: dict[str, Any], report: dict[str, Any]) -> list[dict[str, Any]]:
    """(volume, structure, estimated, true) of every volume of ``summary`` that ``report`` scored."""
    pairs = []
    for entry in summary["volumes"]:
        case = report["cases"].get(entry["name"])
        if case is None or "structures" not in entry:
            continue
        for structure in entry["structures"]:
            true = case["dice"].get(structure["name"])
            if true is None:
                continue
            estimate = structure["estimated_dice"]
            pairs.append({"volume": entry["name"], "structure": structure["name"], "true": float(true),
                          "estimated": 0.0 if estimate is None else float(estimate)})
    return pairs


def worst_caught(true: list[float], estimated: list[float], share: float = WORST_SHARE) -> tuple[int, int]:
    """How many of the ``share`` lowest by ``true`` are among the ``share`` lowest by ``estimated``, of how many
    (at least one)."""
    count = max(1, int(round(share * len(true))))
    worst = set(sorted(range(len(true)), key=lambda i: true[i])[:count])  # Python's sort is stable: ties by order
    flagged = set(sorted(range(len(estimated)), key=lambda i: estimated[i])[:count])
    return len(worst & flagged), count


def spearman(a: list[float], b: list[float]) -> float | None:
    """Spearman's rank correlation (ties by mean rank); None with fewer than 3 pairs or a constant side."""
    if len(a) < 3:
        return None
    from scipy.stats import spearmanr

    value = spearmanr(a, b).correlation
    return None if value is None or not math.isfinite(value) else float(value)


def quality_metrics(pairs: list[dict[str, Any]]) -> dict[str, Any]:
    """The bench's quality figures from ``quality_pairs``."""
    if not pairs:
        return {"pairs": 0, "spearman": None, "mae": None, "bias": None, "worst_caught": None, "worst_count": None,
                "volumes": 0, "volume_spearman": None, "volume_worst_caught": None, "volume_worst_count": None}
    true = [p["true"] for p in pairs]
    estimated = [p["estimated"] for p in pairs]
    caught, count = worst_caught(true, estimated)
    volumes = sorted({p["volume"] for p in pairs})
    volume_true = [statistics.mean(p["true"] for p in pairs if p["volume"] == v) for v in volumes]
    volume_estimated = [statistics.mean(p["estimated"] for p in pairs if p["volume"] == v) for v in volumes]
    volume_caught, volume_count = worst_caught(volume_true, volume_estimated)
    return {"pairs": len(pairs), "spearman": spearman(estimated, true),
            "mae": float(np.mean(np.abs(np.subtract(estimated, true)))),
            "bias": float(np.mean(np.subtract(estimated, true))),
            "worst_caught": caught, "worst_count": count,
            "volumes": len(volumes), "volume_spearman": spearman(volume_estimated, volume_true),
            "volume_worst_caught": volume_caught, "volume_worst_count": volume_count}


def pooled_quality(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The quality figures of several seeds' runs as one sample: their pairs together, each volume named with
    its seed (one seed's evaluation of a case is another volume than another seed's)."""
    return quality_metrics([{**p, "volume": f"{run['seed']}:{p['volume']}"}
                            for run in runs for p in run["quality"].get("points", [])])


def quality_lines(results: dict[str, Any]) -> list[str]:
    """The benchmark's table of the estimates, one row per run with estimates, and one per method of several
    seeds with all their pairs pooled (a target over several seeds is read from that row)."""
    runs = [r for r in results["runs"] if (r.get("quality") or {}).get("pairs")]
    if not runs:
        return []
    rows = []
    for method in dict.fromkeys(run["method"] for run in runs):  # a method's seeds together, then their pool
        seeds = [run for run in runs if run["method"] == method]
        rows += [(method, str(run["seed"]), run["quality"]) for run in seeds]
        if len([run for run in seeds if run["quality"].get("points")]) > 1:
            rows.append((method, "all (pooled)", pooled_quality(seeds)))
    lines = ["## Estimated Dice against true Dice (evaluation split)", "",
             "Per volume and structure: Spearman's rank correlation, mean absolute error (and mean signed "
             "error), and how many of the truly worst 10 % the estimate's worst 10 % hold; the same catch for "
             "whole volumes (mean over structures).", "",
             "| method | seed | pairs | Spearman | MAE | bias | worst 10 % caught | volumes: Spearman | "
             "worst 10 % volumes caught |", "|---|---|---|---|---|---|---|---|---|"]
    for method, seed, q in rows:
        lines.append(f"| {method} | {seed} | {q['pairs']} | {_number(q['spearman'])} | "
                     f"{_number(q['mae'])} | {_number(q['bias'], signed=True)} | "
                     f"{q['worst_caught']} of {q['worst_count']} | {_number(q['volume_spearman'])} | "
                     f"{q['volume_worst_caught']} of {q['volume_worst_count']} |")
    return lines + [""]


def _number(value: float | None, signed: bool = False) -> str:
    if value is None:
        return "n/a"
    return f"{value:+.3f}" if signed else f"{value:.3f}"


def calibration_figure(results: dict[str, Any], path: Path) -> Path | None:
    """Estimated against true Dice of every run's pairs, one colour per structure; None without matplotlib
    or estimates."""
    pairs = [(r, p) for r in results["runs"] for p in (r.get("quality") or {}).get("points", [])]
    if not pairs:
        return None
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    structures = sorted({p["structure"] for _, p in pairs})
    fig, ax = plt.subplots(figsize=(5, 5))
    for index, name in enumerate(structures):
        mine = [p for _, p in pairs if p["structure"] == name]
        ax.scatter([p["true"] for p in mine], [p["estimated"] for p in mine], s=14, alpha=0.75,
                   color=f"C{index}", label=name)
    ax.plot([0, 1], [0, 1], color="0.5", linewidth=1, linestyle="--")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel(f"true Dice ({results['protocol']['eval_split']} split)")
    ax.set_ylabel("estimated Dice")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    seeds = sorted({r["seed"] for r, _ in pairs})
    ax.set_title(f"{results['dataset']}: estimated vs true Dice per volume and structure\n"
                 f"(seed{'s' if len(seeds) > 1 else ''} {', '.join(map(str, seeds))})", fontsize=9)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return path
