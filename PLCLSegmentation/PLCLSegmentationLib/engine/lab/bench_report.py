"""The benchmark's table (markdown) and figures (PNG)."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

from ..files.dataset import Dataset
from ..files.volumes import atomic_path
from .bench_protocol import describe
from .bench_quality import calibration_figure, quality_lines


def _pm(stat: dict[str, Any], digits: int = 3, scale: float = 1.0) -> str:
    if stat is None or stat.get("mean") is None:
        return "n/a"
    mean = stat["mean"] * scale
    std = (stat.get("std") or 0.0) * scale
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def markdown(results: dict[str, Any]) -> str:
    protocol = results["protocol"]
    budget = (f"{protocol['budget_minutes']:g} min" if protocol["budget_minutes"] is not None
              else f"{protocol['budget_iterations']} iterations")
    cases = next(iter(protocol["cases"].values()), {"labeled": [], "unlabeled": [], "evaluation": []})
    named = describe(protocol)
    named = f"{named}: " if named else ""
    lines = [
        f"# Benchmark: {results['dataset']}",
        "",
        f"- Machine: {results['machine']}",
        f"- Date: {results['date']}, plcl {results['version']}",
        f"- Command: `{results['command']}`" if results.get("command")
        else f"- Pooled from: {', '.join(results['pooled_from'])}" if results.get("pooled_from")
        else "- Command: (library call)",
        f"- Protocol: {named}{len(cases['labeled'])} annotated cases ({', '.join(cases['labeled'])} for seed "
        f"{protocol['seeds'][0]}), {len(cases['unlabeled'])} unannotated, evaluation on split "
        f"'{protocol['eval_split']}' ({len(cases['evaluation'])} cases); training budget {budget} per method "
        f"(preset '{protocol['preset']}'); {protocol['checkpoint']}; mean ± std over seeds "
        f"{', '.join(map(str, protocol['seeds']))}.",
        "",
    ]
    methods = results["methods"]
    if methods:
        structures = list(next(iter(methods.values()))["dice"])
        header = (["method", "mean Dice"] + [f"Dice {s}" for s in structures]
                  + ["HD95 mm", "train s", "iterations", "slices/s", "predict s/volume", "peak MB train",
                     "peak MB predict"])
        lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for m in methods.values():
            row = [m["label"], _pm(m["mean_dice"])] + [_pm(m["dice"][s]) for s in structures] + [
                _pm(m["mean_hd95_mm"], 1), _pm(m["train_seconds"], 0), _pm(m["iterations"], 0),
                _pm(m["slices_per_s"], 1), _pm(m["predict_seconds_per_volume"], 2),
                _pm(m["peak_rss_mb_train"], 0), _pm(m["peak_rss_mb_predict"], 0)]
            lines.append("| " + " | ".join(row) + " |")
        lines.append("")
    lines += per_seed_lines(results)
    lines += quality_lines(results)
    lines += ablation_lines(results)
    throughput = results.get("throughput")
    if throughput:
        lines += [f"## Training throughput ({throughput['device']}, {throughput.get('precision', 'fp32')} by default, "
                  f"patch {throughput['patch_size']}, "
                  f"{throughput['slices_per_iteration']} slices per iteration)", "",
                  "| loop | slices/s | speed-up |", "|---|---|---|"]
        lines += [_throughput_row(r) for r in throughput["variants"]]
        preprocessing = throughput.get("preprocessing")
        if preprocessing:
            ms = 1000 * preprocessing["seconds_per_volume"]
            lines += ["", "Preprocessing (reorientation, in-plane resampling, normalisation) is computed once per "
                          f"volume and cached in memory: {ms:.1f} ms per volume of "
                          f"{preprocessing['slices_per_volume']:.0f} slices."]
        lines += ["", "Slowest operations of a training step (torch profiler, self CPU time):", "",
                  "| operation | ms per step | share |", "|---|---|---|"]
        lines += [f"| {p['op']} | {p['self_cpu_ms_per_step']:.1f} | {100 * p['share']:.0f} % |"
                  for p in throughput["profile"]]
        lines.append("")
    if results.get("propagation"):
        from .propagation import markdown as propagation_markdown

        lines += propagation_markdown(results["propagation"])
    if results.get("pooled_from"):  # figures are drawn by each bench run, not from a pool
        return "\n".join(lines)
    lines += ["Figures: `dice_vs_time.png` (mean Dice of intermediate and final models against training time), "
              "`examples.png` (one evaluation slice per method beside the ground truth), "
              "`quality_calibration.png` (estimated against true Dice per volume and structure).", ""]
    return "\n".join(lines)


def per_seed_lines(results: dict[str, Any]) -> list[str]:
    """One row per run: the seed's annotated cases, each structure's Dice, HD95, time, and the best
    point of its Dice-over-time curve (which the last model, the one kept, may fall short of)."""
    runs = [r for r in results["runs"] if r.get("mean_dice") is not None]
    if not runs:
        return []
    cases = results["protocol"]["cases"]
    structures = list(runs[0]["dice"])
    lines = ["## Per seed", "",
             "| method | seed | annotated | mean Dice | " + " | ".join(f"Dice {s}" for s in structures)
             + " | HD95 mm | train s | iterations | best on the curve |",
             "|" + "---|" * (8 + len(structures))]
    for run in sorted(runs, key=lambda r: (list(results["methods"]).index(r["method"]), r["seed"])):
        labeled = (cases.get(run["seed"]) or cases.get(str(run["seed"])) or {}).get("labeled", [])
        hd95 = "n/a" if run.get("mean_hd95_mm") is None else f"{run['mean_hd95_mm']:.1f}"
        points = [p for p in run.get("curve") or [] if p["mean_dice"] is not None]
        best = max(points, key=lambda p: p["mean_dice"]) if points else None
        peak = f"{best['mean_dice']:.3f} at {best['train_seconds'] / 60:.1f} min" if best else "n/a"
        dice = [f"{run['dice'][s]:.3f}" if run["dice"].get(s) is not None else "n/a" for s in structures]
        lines.append(f"| {run['method']} | {run['seed']} | {', '.join(labeled)} | {run['mean_dice']:.3f} | "
                     + " | ".join(dice) + f" | {hd95} | {run['train_seconds']:.0f} | {run['iterations']} | {peak} |")
    return lines + [""]


def ablation_lines(results: dict[str, Any]) -> list[str]:
    """Each variant's mean Dice against its base method's, paired seed by seed (the same
    annotated patient and unannotated volumes), where both ran."""
    variants = {name: m for name, m in results["methods"].items() if m.get("variant_of")}
    if not variants:
        return []
    dice = {(r["method"], r["seed"]): r["mean_dice"] for r in results["runs"] if r.get("mean_dice") is not None}
    lines = ["## Ablation: each variant against the method, seed by seed", "",
             "| variant | mean Dice | change (mean over seeds) | change per seed | better on |",
             "|---|---|---|---|---|"]
    for name, m in variants.items():
        base = m["variant_of"]
        seeds = sorted(seed for method, seed in dice if method == name and (base, seed) in dice)
        changes = [dice[(name, seed)] - dice[(base, seed)] for seed in seeds]
        mean = f"{sum(changes) / len(changes):+.3f}" if changes else "n/a"
        per_seed = ", ".join(f"seed {seed}: {change:+.3f}" for seed, change in zip(seeds, changes)) or "n/a"
        better = f"{sum(c > 0 for c in changes)} of {len(changes)} seeds"
        lines.append(f"| {m['label']} | {_pm(m['mean_dice'])} | {mean} | {per_seed} | {better} |")
    return lines + [""]


def _throughput_row(row: dict) -> str:
    if row.get("slices_per_s") is None:
        return f"| {row['variant']} | failed: {row.get('error', 'unknown')} | |"
    return f"| {row['variant']} | {row['slices_per_s']:.1f} | {row['speedup']:.2f}x |"


def write_figures(out: Path, results: dict[str, Any], dataset: Dataset) -> list[Path]:
    written = [path for path in [dice_time_figure(results, out / "dice_vs_time.png"),
                                 calibration_figure(results, out / "quality_calibration.png")] if path]
    examples = _examples(out, results, dataset)
    if examples:
        written.append(examples)
    return written


def dice_time_figure(results: dict[str, Any], path: Path) -> Path | None:
    """Mean Dice of each run's intermediate and final models against training time, one colour per
    method (its other seeds fainter); None without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for name in results["methods"]:
        for i, run in enumerate(r for r in results["runs"] if r["method"] == name):
            points = sorted((p["train_seconds"] / 60, p["mean_dice"]) for p in run.get("curve") or []
                            if p["mean_dice"] is not None)
            if points:
                label = textwrap.fill(results["methods"][name]["label"], 60) if i == 0 else None
                ax.plot(*zip(*points), marker="o", color=f"C{list(results['methods']).index(name)}",
                        alpha=0.9 if i == 0 else 0.5, label=label)
    ax.set_xlabel("training time (minutes)")
    ax.set_ylabel(f"mean Dice ({results['protocol']['eval_split']} split)")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    ax.set_title(textwrap.fill(f"{results['dataset']}; {results['machine']}", 90), fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return path


def _examples(out: Path, results: dict[str, Any], dataset: Dataset) -> Path | None:
    import numpy as np

    from ..files.volumes import ClassInfo, read_annotation, read_volume
    from .figures import Panel, best_slice, overlay_grid

    seed = results["protocol"]["seeds"][0]
    runs = {r["method"]: r for r in results["runs"] if r["seed"] == seed}
    if not runs:
        return None
    first = next(iter(runs.values()))
    # The case where the methods differ most shows what the unannotated data changes.
    cases = list(first["per_case_dice"])
    spread = {c: np.ptp([r["per_case_dice"][c] or 0 for r in runs.values()]) for c in cases}
    case = max(cases, key=lambda c: spread[c])
    classes = [ClassInfo(v, n, _color(i)) for i, (v, n) in enumerate(sorted(dataset.label_names.items())) if v > 0]
    volume = read_volume(dataset.image(case))
    truth, _ = read_annotation(dataset.label(case), volume)
    row = [Panel(f"{case}", volume, None), Panel("ground truth", volume, truth)]
    for name, run in runs.items():
        labels, segments = read_annotation(Path(run["predictions"]) / f"{case}.seg.nrrd", volume)
        by_name = {c.name.casefold(): c.value for c in classes}
        lut = np.zeros(256, dtype=np.uint8)
        for s in segments:
            lut[s.value] = by_name.get(s.name.casefold(), 0)
        row.append(Panel(f"{name}: Dice {run['per_case_dice'][case]:.2f}", volume, lut[labels]))
    return overlay_grid([row], classes, out / "examples.png", [best_slice(volume, truth)],
                        title=f"{results['dataset']}: {case}")


def _color(index: int) -> tuple[float, float, float]:
    palette = [(0.9, 0.25, 0.2), (0.2, 0.7, 0.3), (0.25, 0.45, 0.95), (0.95, 0.8, 0.2), (0.7, 0.3, 0.8)]
    return palette[(index - 1) % len(palette)]
