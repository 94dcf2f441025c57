"""Where the slices a simulated review corrects lie, by the signal that orders a volume's slices.

``python -m PLCLSegmentationLib.engine.lab.review_signals OUT RUN [RUN ...] --slices K`` writes OUT (Markdown):
per ``plcl bench`` method folder RUN (as review_sim takes it), the information density of its unannotated
volumes' slices by fifth of the stack (slice_signals.py) and, for the review path two slices a volume ordered
by uncertain voxels (the engine's order; ``review_path_pairs``), by uncertain voxels times density
(``dense_path``) and by disagreement with the mirrored copies (``disagreement_path``): how many volumes its K
slices cover, how many lie in each fifth of their stack, their mean uncertain voxels and how many it shares with
the engine's order. No retrain: review_sim measures what a retrain learns from them.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from ..protocol import MODEL_FILE, SUMMARY_FILE
from ..run.summary import review_order
from .review_sim import bench_run, candidate_slices, choose, ranked_slices
from .slice_signals import add_signals, cohort_signals
from .text_report import publish

#: Parts of the stack (by a slice's index over the stack's length) that a choice's slices are counted in.
FIFTHS = 5


def fifth(index: int, length: int) -> int:
    """Which fifth of a stack of ``length`` slices the slice ``index`` lies in (0: the first, from index 0)."""
    return min(FIFTHS - 1, index * FIFTHS // length)


def stack_fifths(chosen: dict[str, list[int]], lengths: dict[str, int]) -> list[int]:
    """How many of the chosen slices lie in each fifth of their stack."""
    counts = [0] * FIFTHS
    for name, indices in chosen.items():
        for index in indices:
            counts[fifth(index, lengths[name])] += 1
    return counts


def run_report(run: Path, k: int) -> list[str]:
    """One RUN's lines of the report (module docstring)."""
    _, seed, cases = bench_run(run)
    summary = json.loads((run / "train" / SUMMARY_FILE).read_text())
    slices = ranked_slices(summary, set(cases["unlabeled"]))
    signals = cohort_signals(run / "train" / MODEL_FILE, summary, set(slices), disagreement=True)
    add_signals(slices, signals)
    lengths = {name: len(s["features"]) for name, s in signals.items()}
    by_fifth = [[] for _ in range(FIFTHS)]
    for name, items in slices.items():
        for item in items:
            by_fifth[fifth(item["index"], lengths[name])].append(item["density"])
    table = [e["name"] for e in review_order(summary["volumes"], summary.get("estimate") != "off")
             if e["name"] in slices]
    candidates = candidate_slices(slices)
    lines = [f"## Seed {seed}: {run}", "",
             "Density by fifth of the stack (mean over its slices): "
             + ", ".join(f"{np.mean(d):.2f}" if d else "n/a" for d in by_fifth), "",
             "| order of a volume's slices | volumes | slices in each fifth of the stack | mean uncertain voxels | "
             "slices shared with the review path |", "|---|---|---|---|---|"]
    path = choose("review_path_pairs", candidates, k, seed, table)  # two a volume, as the signal arms walk
    shared_with = {(n, i) for n, ix in path.items() for i in ix}
    for arm in ("review_path_pairs", "dense_path", "disagreement_path"):
        chosen = choose(arm, candidates, k, seed, table)
        items = [item for n, ix in chosen.items() for item in slices[n] if item["index"] in ix]
        shared = sum((n, i) in shared_with for n, ix in chosen.items() for i in ix)
        lines.append(f"| {arm} | {len(chosen)} | {' / '.join(map(str, stack_fifths(chosen, lengths)))} | "
                     f"{np.mean([it['uncertain_voxels'] for it in items]):.0f} | {shared} of {len(items)} |")
    return lines + [""]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="review_signals", description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="the report (Markdown)")
    parser.add_argument("runs", type=Path, nargs="+", help="plcl bench method folders (runs/seedS/METHOD)")
    parser.add_argument("--slices", type=int, default=30, metavar="K")
    args = parser.parse_args(argv)
    lines = [f"# Where the review's {args.slices} slices lie, by the signal that orders them", ""]
    for run in args.runs:
        lines += run_report(run, args.slices)
    publish("\n".join(lines), args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
