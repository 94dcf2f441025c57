"""The review study over seeds (issue 28): the estimate's figures per seed and pooled, the simulated review.

``python -m PLCLSegmentationLib.engine.lab.review_study OUT --data DATA --split val
--predictions SEED=DIR ... [--reviews SEED=DIR ...]`` scores each seed's ``plcl predict`` folder of the
evaluation split against its reference labels (evaluation/report.py) and its summary.json's estimates
against those Dice (lab/bench_quality.py: Spearman, MAE, bias, the worst 10 % caught), then all seeds'
pairs pooled; draws the calibration figure of every seed's pairs; and gathers ``review_sim`` folders
(each an arm's OUT/review.json; several folders of one seed are one seed's arms) into a table of mean
Dice and gain per corrected slice, arm by arm and seed by seed, and a figure of the gains; where the arms
corrected different numbers of slices, the curve of gain against slices corrected. Writes
OUT/review_study.json, OUT/review_study.md, OUT/calibration.png, OUT/simulated_review.png and
OUT/review_curve.png.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

from ..evaluation.report import evaluate
from ..files.volumes import atomic_path
from ..protocol import SUMMARY_FILE
from ..run.summary import write_json
from .bench_quality import calibration_figure, pooled_quality, quality_metrics, quality_pairs
from .review_sim import arm_family, cohort_volume_dice, split_gain


def seed_folders(values: list[str], option: str) -> list[tuple[int, Path]]:
    found = []
    for value in values:
        seed, _, folder = value.partition("=")
        if not seed.isdigit() or not folder:
            raise SystemExit(f"review_study: {option} {value}: give SEED=FOLDER")
        found.append((int(seed), Path(folder)))
    return found


def estimate_runs(predictions: list[tuple[int, Path]], data: str, split: str) -> list[dict[str, Any]]:
    runs = []
    for seed, folder in predictions:
        summary = json.loads((folder / SUMMARY_FILE).read_text())
        report = evaluate(str(folder), data=data, split=split)
        pairs = quality_pairs(summary, report)
        runs.append({"method": "plcl", "seed": seed, "folder": str(folder), "mean_dice": report["mean"]["mean_dice"],
                     "quality": {**quality_metrics(pairs), "points": pairs}})
    return runs


def _per_slice(gain: float, slices: int) -> float | None:
    return gain / slices if slices else None


def review_arms(reviews: list[tuple[int, Path]], data: str) -> list[dict[str, Any]]:
    """One row per seed and arm: slices corrected, mean Dice on the evaluation split and on the cohort
    (review_sim.cohort_volume_dice, scored here for a folder made before review_sim kept it), their gains over
    the seed's model and per corrected slice, and the cohort's gain taken apart (review_sim.split_gain: the
    corrections' own, the retrain's on the other volumes against the seed's ``none`` arm)."""
    rows = []
    cohorts: list[tuple[dict[str, float], dict[str, list[int]]]] = []  # each row's cohort per volume, its corrections
    bases: dict[str, dict[str, float]] = {}
    for seed, folder in reviews:
        review = json.loads((folder / "review.json").read_text())
        run = Path(review["run"])
        if review["run"] not in bases:
            bases[review["run"]] = (review.get("base_cohort_volumes")
                                    or cohort_volume_dice(run, None, {}, data))
        before = bases[review["run"]]
        for arm in review["arms"]:
            gain = arm["mean_dice"] - review["base_mean_dice"]
            after = arm.get("cohort_volumes") or cohort_volume_dice(run, folder / arm["arm"] / "train", arm["chosen"],
                                                                    data)
            cohort_base, cohort = statistics.mean(before.values()), statistics.mean(after.values())
            cohorts.append((after, arm["chosen"]))
            rows.append({"seed": seed, "run": review["run"], "arm": arm["arm"], "slices": arm["slices"],
                         "base": review["base_mean_dice"],
                         "mean_dice": arm["mean_dice"], "gain": gain, "gain_per_slice": _per_slice(gain, arm["slices"]),
                         "cohort_base": cohort_base, "cohort_dice": cohort, "cohort_gain": cohort - cohort_base,
                         "cohort_gain_per_slice": _per_slice(cohort - cohort_base, arm["slices"])})
    nones = {row["run"]: after for row, (after, _) in zip(rows, cohorts) if row["arm"] == "none"}
    for row, (after, chosen) in zip(rows, cohorts):
        split = split_gain(bases[row["run"]], after, chosen, None if row["arm"] == "none" else nones.get(row["run"]))
        row.update(corrections=split["corrections"], others_vs_none=split["others_vs_none"])
    return sorted(rows, key=lambda r: (r["arm"], r["seed"]))


def _f(value: float | None, signed: bool = False) -> str:
    return "n/a" if value is None else f"{value:+.4f}" if signed else f"{value:.3f}"


def markdown(study: dict[str, Any]) -> str:
    lines = ["| seed | pairs | mean Dice | Spearman | MAE | bias | worst 10 % pairs caught | volumes: Spearman | "
             "worst 10 % volumes caught |", "|---|---|---|---|---|---|---|---|---|"]
    for run in [*study["runs"], study["pooled"]]:
        q = run["quality"]
        lines.append(f"| {run['seed']} | {q['pairs']} | {_f(run.get('mean_dice'))} | {_f(q['spearman'])} | "
                     f"{_f(q['mae'])} | {_f(q['bias'], True)} | {q['worst_caught']} of {q['worst_count']} | "
                     f"{_f(q['volume_spearman'])} | {q['volume_worst_caught']} of {q['volume_worst_count']} |")
    if study["arms"]:
        lines += ["", "| arm | seed | slices corrected | model's mean Dice | after the retrain | gain | "
                  "gain per slice | cohort before | cohort after | cohort gain | cohort gain per slice | "
                  "corrections | others against none |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for row in study["arms"]:
            lines.append(f"| {row['arm']} | {row['seed']} | {row['slices']} | {row['base']:.3f} | "
                         f"{row['mean_dice']:.3f} | {row['gain']:+.3f} | {_f(row['gain_per_slice'], True)} | "
                         f"{row['cohort_base']:.3f} | {row['cohort_dice']:.3f} | {row['cohort_gain']:+.4f} | "
                         f"{_f(row['cohort_gain_per_slice'], True)} | {row['corrections']:+.3f} | "
                         f"{_f(row['others_vs_none'], True)} |")
        lines += ["", "| arm | seeds | mean gain | against none (the warm start alone), mean | cohort: mean gain | "
                  "cohort: against none | corrections | others against none |", "|---|---|---|---|---|---|---|---|"]
        for arm, summary in study["arm_means"].items():
            lines.append(f"| {arm} | {summary['seeds']} | {summary['gain']:+.4f} | "
                         f"{_f(summary['against_none'], True)} | {summary['cohort_gain']:+.4f} | "
                         f"{_f(summary['cohort_against_none'], True)} | {summary['corrections']:+.3f} | "
                         f"{_f(summary['others_vs_none'], True)} |")
    return "\n".join(lines) + "\n"


def arm_label(row: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    """A row's arm, with its number of slices where the same arm ran with several (``random (30)``)."""
    several = len({r["slices"] for r in rows if r["arm"] == row["arm"]}) > 1
    return f"{row['arm']} ({row['slices']})" if several else row["arm"]


def arm_means(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per arm (and number of slices, arm_label): its mean gain over the seeds, and over the seeds that ran
    ``none``, its mean gain over none's."""
    found: dict[str, dict[str, Any]] = {}
    labels = [arm_label(r, rows) for r in rows]
    for label in sorted(set(labels)):
        mine = [r for r, mine_label in zip(rows, labels) if mine_label == label]
        found[label] = {"seeds": ", ".join(str(r["seed"]) for r in mine)}
        for field, name in (("gain", "against_none"), ("cohort_gain", "cohort_against_none")):
            none = {r["seed"]: r[field] for r in rows if r["arm"] == "none"}
            paired = [r[field] - none[r["seed"]] for r in mine if r["seed"] in none]
            found[label][field] = statistics.mean(r[field] for r in mine)
            found[label][name] = statistics.mean(paired) if paired and label != "none" else None
        found[label]["corrections"] = statistics.mean(r["corrections"] for r in mine)
        others = [r["others_vs_none"] for r in mine if r["others_vs_none"] is not None]
        found[label]["others_vs_none"] = statistics.mean(others) if others else None
    return found


def review_figure(rows: list[dict[str, Any]], path: Path) -> None:
    """Each arm's gain seed by seed: left on the evaluation split, right on the cohort as the reviewer holds it."""
    _save_png(draw_review_figure(rows), path)


def _save_png(fig: Any, path: Path) -> None:
    """Write a study figure atomically and free it."""
    import matplotlib.pyplot as plt

    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)


def draw_review_figure(rows: list[dict[str, Any]]) -> Any:
    """The figure of review_figure; its width grows with the arms and their labels stand upright once they would
    crowd each other (a study with retrains and draws has a dozen arms)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [arm_label(r, rows) for r in rows]
    arms = sorted(set(labels))
    seeds = sorted({r["seed"] for r in rows})
    slices = max(r["slices"] for r in rows)
    crowded = len(arms) > 4
    fig, axes = plt.subplots(1, 2, figsize=(max(10.0, 0.8 * len(arms)), 5.4 if crowded else 3.8), sharey=True)
    width = 0.8 / max(1, len(seeds))
    for ax, field, title in ((axes[0], "gain", "evaluation split (volumes nobody reviewed)"),
                             (axes[1], "cohort_gain", "the cohort: corrected slices kept, the rest retrained")):
        for s, seed in enumerate(seeds):
            gains = [next((r[field] for r, label in zip(rows, labels) if label == arm and r["seed"] == seed),
                          float("nan")) for arm in arms]
            ax.bar([a + s * width for a in range(len(arms))], gains, width, label=f"seed {seed}", color=f"C{s}")
        ax.axhline(0, color="0.3", linewidth=0.8)
        ax.set_xticks([a + width * (len(seeds) - 1) / 2 for a in range(len(arms))], arms, fontsize=8,
                      rotation=90 if crowded else 0)
        ax.set_title(title, fontsize=9)
        ax.grid(axis="y", alpha=0.3)
    axes[0].set_ylabel("mean Dice after the retrain\nminus the model's")
    axes[0].legend(fontsize=8)
    fig.suptitle(f"Simulated review: up to {slices} slices corrected, accepted slice by slice, one retrain",
                 fontsize=10)
    fig.tight_layout()
    return fig


def curve_points(rows: list[dict[str, Any]], field: str) -> dict[str, dict[int, dict[int, float]]]:
    """Per arm family, per number of slices corrected, per seed: the gain in ``field``, the mean of the seed's
    random draws and retrains; ``none`` (the mean of its retrains) is every family's point at 0 slices."""
    draws: dict[tuple[str, int, int], list[float]] = {}
    for row in rows:
        draws.setdefault((arm_family(row["arm"]), row["slices"], row["seed"]), []).append(row[field])
    found: dict[str, dict[int, dict[int, float]]] = {}
    for (family, slices, seed), gains in draws.items():
        if family != "none":
            found.setdefault(family, {}).setdefault(slices, {})[seed] = statistics.mean(gains)
    for (family, _, seed), gains in draws.items():
        if family == "none":
            for points in found.values():
                points.setdefault(0, {})[seed] = statistics.mean(gains)
    return found


def curve_figure(rows: list[dict[str, Any]], path: Path) -> None:
    """The gain against the number of slices corrected, arm by arm: the mean over seeds (each seed the mean of
    its random draws and retrains) as a line, each seed as a dot; left on the evaluation split, right on the
    cohort."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for ax, field, title in ((axes[0], "gain", "evaluation split (volumes nobody reviewed)"),
                             (axes[1], "cohort_gain", "the cohort: corrected slices kept, the rest retrained")):
        for n, (family, points) in enumerate(sorted(curve_points(rows, field).items())):
            ks = sorted(points)
            ax.plot(ks, [statistics.mean(points[k].values()) for k in ks], "-o", color=f"C{n}", label=family)
            for k in ks:
                ax.scatter([k] * len(points[k]), list(points[k].values()), s=12, color=f"C{n}", alpha=0.4)
        ax.axhline(0, color="0.3", linewidth=0.8)
        ax.set_xlabel("slices corrected")
        ax.set_title(title, fontsize=9)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("mean Dice after the retrain\nminus the model's")
    axes[0].legend(fontsize=8)
    fig.suptitle("Simulated review: the gain by slices corrected (line: mean of seeds; dots: seeds)", fontsize=10)
    fig.tight_layout()
    _save_png(fig, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="review_study", description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--data", required=True)
    parser.add_argument("--split", default="val")
    parser.add_argument("--predictions", nargs="+", required=True, metavar="SEED=DIR")
    parser.add_argument("--reviews", nargs="*", default=[], metavar="SEED=DIR")
    args = parser.parse_args(argv)
    runs = estimate_runs(seed_folders(args.predictions, "--predictions"), args.data, args.split)
    pooled = {"seed": "all", "mean_dice": statistics.mean(r["mean_dice"] for r in runs),
              "quality": pooled_quality(runs)}
    rows = review_arms(seed_folders(args.reviews, "--reviews"), args.data)
    study = {"runs": runs, "pooled": pooled, "arms": rows, "arm_means": arm_means(rows) if rows else {}}
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(args.out / "review_study.json", study)
    with atomic_path(args.out / "review_study.md") as tmp, open(tmp, "w") as f:
        f.write(markdown(study))
    calibration_figure({"runs": runs, "protocol": {"eval_split": args.split}, "dataset": Path(args.data).name},
                       args.out / "calibration.png")
    if rows:
        review_figure(rows, args.out / "simulated_review.png")
        if len({r["slices"] for r in rows if r["arm"] != "none"}) > 1:
            curve_figure(rows, args.out / "review_curve.png")
    print(markdown(study))
    return 0


if __name__ == "__main__":
    sys.exit(main())
