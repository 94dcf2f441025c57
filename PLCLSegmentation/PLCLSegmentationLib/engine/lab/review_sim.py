"""A simulated review: correct k slices of the unannotated volumes, accept them slice by slice, retrain once.

``python -m PLCLSegmentationLib.engine.lab.review_sim RUN OUT --slices K [--arms uncertain,random]`` takes a
``plcl bench`` method folder RUN (``runs/seedS/plcl``: its training run, which segmented every
unannotated volume, and its evaluation report) and, per arm, chooses K slices of those volumes, as
the engine's own quality.slice_uncertainties lists them from the run's predictions and uncertainty
maps (so a run made before a change of that function is ranked as the engine ranks now):
``uncertain`` the K slices of highest mean uncertainty, ``uncertain_voxels`` the slice of most
uncertain voxels (the sum of their entropy) of each of the K volumes whose such slice is highest
(one slice a volume, then a second, ...), ``random`` K drawn by seed from the same slices. The table arms
follow the review table as the module shows it (the run's volumes in ``run.summary.review_order``: lowest
estimated Dice first) and correct every slice they show until K are corrected: ``review_path`` is a reviewer who
presses "Next uncertain slice" (the module's review.SLICES_PER_PASS, 1 since 2026-12-07: the slice of most
uncertain voxels of each volume in the table's order, then each one's next; ``review_path_1`` by its name of
before); ``review_path_pairs`` the module's path from 2026-12-05 to 2026-12-07, two a volume ("review_path" in
results of those days); ``whole_volumes`` the module's path until 2026-12-05 (every slice of the first volume,
highest mean uncertainty first, then the next volume's; "review_path" in results of before); ``review_path_2``
two a volume by the mean; ``worst_volumes`` the least certain slice (by the mean) of each of the K first volumes
(then each one's second, ...); ``dense_path`` the review path with a volume's slices ordered by their uncertain
voxels times their information density, ``disagreement_path`` by their disagreement with the mirrored copies
(slice_signals.py); ``suggestive`` the slices of most uncertain voxels (the top twice K) that together stand
for the cohort best by the model's features (suggestive annotation, slice_signals.representative_slices);
``stack_path`` the review path that picks in each volume its least certain slice in the third of the heart's
stack (base, middle, apex by the predicted extent) corrected least so far (stack_balanced_walk).
A reviewer who corrects a slice leaves the ground truth on it, so each chosen volume becomes annotated on exactly
its chosen slices (``--annotated-slices``, the ground truth label file); the model is retrained once
from the run's model (``--init-model``, the engine's warm-start schedule) with the run's annotated
cases and the other volumes unannotated, the evaluation split segmented and scored. ``none``
retrains with no slice corrected (what the warm start alone changes). Two measures per arm: the mean
Dice on the evaluation split (what the retrain learned, on volumes nobody reviewed) and on the cohort
(the unannotated volumes as the reviewer holds them afterwards: the corrected slices kept, the rest
segmented by the retrain; ``cohort_volume_dice``), the cohort's gain taken apart (``split_gain``): what the
corrected slices add to their own volumes, and what the retrain changes on the volumes nobody corrected.
Since 2026-12-06 the retrain segments each corrected volume again around its corrected slices (the engine's
partly annotated volumes), as the module then keeps it, and the cohort is scored so. ``--resegment`` scores the
arms of an OUT run before as such a retrain would (each one's corrected slices kept, the rest from the retrained
model: ``cohort_resegmented_*`` in review.json), where the retrain then left a corrected volume's other slices
as the run segmented them.
``--set KEY=VALUE`` passes a setting to every retrain (recorded in review.json). ``--retrain-seed`` retrains the
same slices with another seed (the arm recorded as ``ARM_retrainN``): what one retrain varies by itself. Writes
OUT/review.json and OUT/review.md: both per arm, their gains over the run's model and the gains per corrected slice.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .. import slicing
from ..evaluation.metrics import dice_per_class
from ..evaluation.report import evaluate
from ..files.dataset import read_dataset
from ..files.volumes import atomic_path, read_annotation, read_volume
from ..method.quality import slice_uncertainties
from ..protocol import MODEL_FILE, SUMMARY_FILE
from ..run.summary import review_order, write_json
from .child import run_child
from .slice_signals import add_signals, cohort_signals, representative_slices

#: The arms, and the slice item's field the ranked ones order by (highest first).
RANKED = {"uncertain": "uncertainty", "uncertain_voxels": "uncertain_voxels"}
#: Ranked arms that take one slice per volume before a second of any (a reviewer goes on to the next volume).
SPREAD = {"uncertain_voxels"}
#: Arms that follow the review table's order of volumes (module docstring): how many slices of a volume
#: each corrects before it goes on to the next (None: every slice; then each volume's next ones), and the
#: slice item's field that orders a volume's slices (highest first; the engine's order is "uncertain_voxels"
#: since 2026-12-05, "uncertainty" before).
TABLE_ARMS = {"review_path": (1, "uncertain_voxels"), "review_path_1": (1, "uncertain_voxels"),
              "review_path_pairs": (2, "uncertain_voxels"), "whole_volumes": (None, "uncertainty"),
              "review_path_2": (2, "uncertainty"), "worst_volumes": (1, "uncertainty"),
              "dense_path": (2, "dense_voxels"), "disagreement_path": (2, "disagreement")}
#: Arms ordered by a signal of slice_signals.py (computed with the run's model only where one is asked for).
SIGNAL_ARMS = {"dense_path", "disagreement_path", "suggestive"}
#: The review path whose pick in each volume is its least certain slice in the third of the heart's stack (by the
#: predicted foreground's extent) corrected least so far (stack_balanced_walk).
STACK_ARMS = {"stack_path"}
ARMS = (*RANKED, *TABLE_ARMS, *STACK_ARMS, "suggestive", "random", "none")


def bench_run(run: Path, bench: Path | None = None) -> tuple[dict[str, Any], int, dict[str, Any]]:
    """A ``plcl bench`` method folder's bench results (``bench``/results.json; default: three levels above RUN),
    its seed (from ``runs/seedS``) and that seed's cases (annotated, unannotated, evaluation)."""
    results = json.loads(((bench or run.parents[2]) / "results.json").read_text())
    seed = int(run.parent.name.removeprefix("seed"))
    return results, seed, results["protocol"]["cases"].get(str(seed)) or results["protocol"]["cases"][seed]


def segmentation_classes(entry: dict[str, Any], classes: list[dict[str, Any]]) -> np.ndarray:
    """A summary entry's segmentation as class indices (1 for ``classes[0]``, ...) on its image's grid: a
    .seg.nrrd's segments by name, a label map's values by the classes' values."""
    values, segments = read_annotation(entry["segmentation"], read_volume(entry["image"]))
    names = [c["name"] for c in classes]
    index_of = ({s.value: names.index(s.name) + 1 for s in segments} if segments is not None
                else {c["value"]: i for i, c in enumerate(classes, 1)})
    labels = np.zeros(values.shape, np.uint8)
    for value, index in index_of.items():
        labels[values == value] = index
    return labels


def ranked_slices(summary: dict[str, Any], cases: set[str]) -> dict[str, list[dict[str, Any]]]:
    """Each volume of ``cases``: its slice items as the engine lists them now, from the run's segmentation and
    uncertainty map (summary.json's ``files`` and ``uncertainty``)."""
    names = [c["name"] for c in summary["classes"]]
    found = {}
    for entry in summary["volumes"]:
        if entry["name"] not in cases:
            continue
        labels = segmentation_classes(entry, summary["classes"])
        uncertainty = read_volume(entry["uncertainty"]).array
        axis = slicing.AXIS_NAMES.index(entry["slice_axis"])
        found[entry["name"]] = slice_uncertainties(labels, uncertainty, axis, names)
    return found


def candidate_slices(slices: dict[str, list[dict[str, Any]]]) -> list[tuple[str, int, dict[str, Any]]]:
    """(volume, slice index, its item) of every listed slice, in a fixed order."""
    return [(name, item["index"], item) for name in sorted(slices) for item in slices[name]]


def table_walks(candidates: list[tuple[str, int, dict[str, Any]]], table: Sequence[str],
                field: str) -> dict[str, list[tuple[str, int, dict[str, Any]]]]:
    """Each volume of the review table (in its order): its candidate slices, highest ``field`` first."""
    walks: dict[str, list[tuple[str, int, dict[str, Any]]]] = {name: [] for name in table}
    for candidate in sorted(candidates, key=lambda c: -c[2][field]):  # stable: the engine's order on ties
        if candidate[0] in walks:
            walks[candidate[0]].append(candidate)
    return walks


def stack_third(item: dict[str, Any], extent: tuple[int, int]) -> int:
    """Which third (0, 1, 2) of a volume's predicted foreground, slices ``extent`` (first, last), a slice is in."""
    first, last = extent
    position = (min(max(item["index"], first), last) - first) / (last - first + 1)
    return min(2, int(3 * position))


def stack_balanced_walk(walks: dict[str, list[tuple[str, int, dict[str, Any]]]], k: int
                        ) -> list[tuple[str, int, dict[str, Any]]]:
    """The review path (one slice a volume in the table's order, then each one's next) where each volume's pick is
    its least certain slice (first in its walk) in the third of its stack corrected least so far, the thirds of
    equal count by that slice's uncertain voxels: corrections spread along the heart (base, middle, apex) while
    each still fixes the most it can there. ``walks``: each volume's candidates, least certain first."""
    extents = {}
    for name, walk in walks.items():
        foreground = [c[1] for c in walk if c[2]["structures"]] or [c[1] for c in walk] or [0]
        extents[name] = (min(foreground), max(foreground))
    remaining = {name: list(walk) for name, walk in walks.items()}
    counts = [0, 0, 0]
    picked: list[tuple[str, int, dict[str, Any]]] = []
    while len(picked) < k and any(remaining.values()):
        for name, walk in remaining.items():
            if not walk or len(picked) >= k:
                continue
            best = {}
            for candidate in walk:  # least certain first: the first of each third is its best
                best.setdefault(stack_third(candidate[2], extents[name]), candidate)
            third = min(best, key=lambda t: (counts[t], -best[t][2]["uncertain_voxels"]))
            picked.append(best[third])
            walk.remove(best[third])
            counts[third] += 1
    return picked


def choose(arm: str, candidates: list[tuple[str, int, dict[str, Any]]], k: int, seed: int,
           table: Sequence[str] = (), draw: int = 0,
           features: dict[str, np.ndarray] | None = None) -> dict[str, list[int]]:
    """The slices an arm corrects, by volume; ``table``: the volumes in the review table's order (the table arms);
    ``draw``: another random draw for the same seed (``random``); ``features``: each volume's slices' model
    features, in the file's slice order (``suggestive``)."""
    if arm in TABLE_ARMS:
        cap, field = TABLE_ARMS[arm]
        walks = table_walks(candidates, table, field)
        longest = max(map(len, walks.values()), default=0)
        cap = cap or longest or 1
        picked = [c for start in range(0, longest, cap) for walk in walks.values() for c in walk[start:start + cap]][:k]
    elif arm in STACK_ARMS:
        picked = stack_balanced_walk(table_walks(candidates, table, "uncertain_voxels"), k)
    elif arm in RANKED:
        field = RANKED[arm]
        ranked = sorted(candidates, key=lambda c: (-c[2][field], c[0], c[1]))
        if arm in SPREAD:  # each volume's top slice first, then each one's second, ...
            taken: dict[str, int] = {}
            turns = []
            for name, _, _ in ranked:
                turns.append(taken.get(name, 0))
                taken[name] = turns[-1] + 1
            ranked = [c for _, c in sorted(zip(turns, ranked), key=lambda pair: pair[0])]
        picked = ranked[:k]
    elif arm == "suggestive":
        if features is None:
            raise ValueError("the suggestive arm needs the slices' features")
        items = {(name, index): item for name, index, item in candidates}
        chosen_pairs = representative_slices([(n, i, item["uncertain_voxels"]) for n, i, item in candidates],
                                             features, k)
        picked = [(name, index, items[name, index]) for name, index in chosen_pairs]
    elif arm == "random":
        picked = random.Random(seed + 5000 + 1000 * draw).sample(candidates, min(k, len(candidates)))
    else:
        picked = []
    chosen: dict[str, list[int]] = {}
    for name, index, _ in picked:
        chosen.setdefault(name, []).append(index)
    return {name: sorted(indices) for name, indices in sorted(chosen.items())}


def recorded_name(arm: str, draw: int = 0, retrain_seed: int | None = None) -> str:
    """The name an arm's run is recorded under: a later random draw and another retrain seed apart from the
    first (``random_draw2``, ``review_path_retrain100``); arm_family reads it back."""
    name = f"{arm}_draw{draw + 1}" if arm == "random" and draw else arm
    return name if retrain_seed is None else f"{name}_retrain{retrain_seed}"


def arm_family(name: str) -> str:
    """A recorded name's arm, without its random draw or retrain seed (``random_draw2_retrain7`` is ``random``)."""
    return re.sub(r"(_draw\d+)?(_retrain\d+)?$", "", name)


def annotated_after_review(cases: dict[str, Any], chosen: dict[str, list[int]]) -> tuple[list[str], list[str]]:
    """The retrain's annotated cases and their ``--annotated-slices`` specs: the protocol's (whole volumes, or
    its annotated slices where it has them, ``cases["slices"]``), then each corrected volume on its chosen slices."""
    annotated = cases.get("slices") or {}
    specs = [slicing.spec_text(annotated[c]) if c in annotated else "all" for c in cases["labeled"]]
    return list(cases["labeled"]) + list(chosen), specs + [slicing.spec_text(chosen[c]) for c in chosen]


def segment_with_retrain(arm_folder: Path, name: str, images: list[str], device: str) -> Path:
    """``plcl predict`` of ``images`` with the arm's retrained model into ARM/NAME (log ARM/NAME.log), without
    the quality estimate (scored against the reference only); the folder."""
    run_child(["predict", "--model", str(arm_folder / "train" / MODEL_FILE), "--out", str(arm_folder / name),
               "--device", device, "--estimate", "off", *images], arm_folder / f"{name}.log")
    return arm_folder / name


def run_arm(arm: str, chosen: dict[str, list[int]], run: Path, results: dict[str, Any], data: str,
            out: Path, args: argparse.Namespace) -> dict[str, Any]:
    dataset = read_dataset(data)
    seed = results["seed"]
    cases = results["cases"]
    folder = out / arm
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    labeled, specs = annotated_after_review(cases, chosen)
    unlabeled = [c for c in cases["unlabeled"] if c not in chosen]
    train = ["train", "--data", str(dataset.root), "--labeled-cases", ",".join(labeled),
             "--unlabeled-cases", ",".join(unlabeled), "--init-model", str(run / "train" / MODEL_FILE),
             "--out", str(folder / "train"), "--seed", str(seed if args.retrain_seed is None else args.retrain_seed),
             "--device", args.device,
             *[a for spec in specs for a in ("--annotated-slices", spec)],
             *[a for setting in args.set for a in ("--set", setting)],
             *(["--iterations", str(args.iterations)] if args.iterations else ["--minutes", str(args.minutes)])]
    trained = run_child(train, folder / "train.log")
    images = [dataset.image(c) for c in cases["evaluation"]]
    segment_with_retrain(folder, "predict", images, args.device)
    report = evaluate(str(folder / "predict"), data=str(dataset.root), split=args.eval_split)
    cohort = cohort_volume_dice(run, folder / "train", chosen, data)
    return {"arm": arm, "slices": sum(len(v) for v in chosen.values()), "chosen": chosen,
            "mean_dice": report["mean"]["mean_dice"], "dice": report["mean"]["dice"],
            "cohort_mean_dice": float(np.mean(list(cohort.values()))), "cohort_volumes": cohort,
            "train_wall_seconds": trained["seconds"]}


def cohort_volume_dice(run: Path, arm_train: Path | None, chosen: dict[str, list[int]], data: str,
                       corrected: dict[str, dict[str, Any]] | None = None) -> dict[str, float]:
    """Each of the run's unannotated volumes' mean Dice as a reviewer holds it after an arm: the retrain's
    segmentation of each volume it segmented (``arm_train``'s summary; None: the run's own, nothing reviewed),
    and for each volume the arm corrected, with the corrected slices set to the ground truth (the retrain learns
    from them and keeps them as accepted), the retrain's segmentation where it segmented the volume around them
    (its entry lists ``annotated_slices``: the engine since 2026-12-06, as the module keeps it), else
    ``corrected``'s (the summary entry by name of another, see resegment), else the run's. A volume's mean is over
    its structures
    present in the segmentation or the reference, as ``plcl evaluate``; volumes with neither are left out."""
    dataset = read_dataset(data)
    base = json.loads((run / "train" / SUMMARY_FILE).read_text())
    index_of = {c["value"]: i for i, c in enumerate(base["classes"], 1)}
    retrained = {} if arm_train is None else {
        e["name"]: e for e in json.loads((arm_train / SUMMARY_FILE).read_text())["volumes"]}
    found = {}
    for entry in base["volumes"]:
        if "annotated_slices" in entry:  # the run's own training data (a few slices of it annotated), no cohort
            continue
        name = entry["name"]
        reference_values, _ = read_annotation(dataset.label(name), read_volume(entry["image"]))
        reference = np.zeros(reference_values.shape, np.uint8)
        for value, index in index_of.items():
            reference[reference_values == value] = index
        if name in chosen:
            around = retrained.get(name) if "annotated_slices" in retrained.get(name, {}) else None
            labels = segmentation_classes(around or (corrected or {}).get(name, entry), base["classes"])
            axis = slicing.AXIS_NAMES.index(entry["slice_axis"])
            for index in chosen[name]:
                where = [slice(None)] * labels.ndim
                where[axis] = index
                labels[tuple(where)] = reference[tuple(where)]
        else:
            if arm_train is not None and name not in retrained:
                raise RuntimeError(f"{arm_train / SUMMARY_FILE}: the retrain did not segment {name}")
            labels = segmentation_classes(retrained.get(name, entry), base["classes"])
        dice = [d for d in dice_per_class(labels, reference, range(1, len(index_of) + 1)).values() if d is not None]
        if dice:
            found[name] = float(np.mean(dice))
    return found


def resegment(arm_folder: Path, chosen: dict[str, list[int]], data: str, device: str) -> dict[str, dict[str, Any]]:
    """The corrected volumes segmented by the arm's retrained model (``plcl predict`` into
    ARM/resegment): their summary entries by name."""
    dataset = read_dataset(data)
    out = segment_with_retrain(arm_folder, "resegment", [dataset.image(name) for name in chosen], device)
    return {e["name"]: e for e in json.loads((out / SUMMARY_FILE).read_text())["volumes"]}


def rescore_resegmented(run: Path, out: Path, data: str, device: str) -> dict[str, Any]:
    """OUT's review.json with each arm's cohort scored as if the retrain segmented its corrected volumes again
    (``cohort_resegmented_volumes`` and ``_mean_dice``; module docstring)."""
    review = json.loads((out / "review.json").read_text())
    for arm in review["arms"]:
        entries = resegment(out / arm["arm"], arm["chosen"], data, device) if arm["chosen"] else {}
        cohort = cohort_volume_dice(run, out / arm["arm"] / "train", arm["chosen"], data, entries)
        arm["cohort_resegmented_volumes"] = cohort
        arm["cohort_resegmented_mean_dice"] = float(np.mean(list(cohort.values())))
    write_json(out / "review.json", review)
    return review


def split_gain(before: dict[str, float], after: dict[str, float], chosen: dict[str, list[int]],
               none: dict[str, float] | None = None) -> dict[str, float | None]:
    """An arm's cohort gain taken apart: ``corrections``, the Dice the corrected slices add to their own
    volumes, summed over those volumes (``before`` is the run's segmentation, ``after`` the arm's, where a
    corrected volume keeps the run's segmentation but for its corrected slices); ``others``, the retrain's
    mean change on the volumes nobody corrected, against the run (``others_vs_none``: against the retrain
    with nothing corrected, ``none``, which takes the warm start's own change out)."""
    corrected = [n for n in chosen if n in after and n in before]
    others = [n for n in after if n not in chosen and n in before]
    against_none = [n for n in others if none is not None and n in none]
    return {"corrections": float(sum(after[n] - before[n] for n in corrected)),
            "others": float(np.mean([after[n] - before[n] for n in others])) if others else None,
            "others_vs_none": float(np.mean([after[n] - none[n] for n in against_none])) if against_none else None}


def markdown(review: dict[str, Any]) -> str:
    lines = [f"# Simulated review: {review['run']}", "",
             f"- Seed {review['seed']}; {review['k']} slices corrected per arm; base model mean Dice "
             f"{review['base_mean_dice']:.3f} on split '{review['eval_split']}'; {review['date']}.", "",
             f"Cohort (the unannotated volumes): {review['base_cohort_dice']:.3f} before the review.", "",
             "Corrections: the Dice the corrected slices add to their own volumes, summed over them; others: "
             "the retrain's mean change on the volumes nobody corrected, against the retrain with none corrected.", "",
             "| arm | slices corrected | volumes | mean Dice | gain | gain per slice | cohort mean Dice | "
             "cohort gain | corrections | others | retrain s |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    none = next((a["cohort_volumes"] for a in review["arms"] if a["arm"] == "none"), None)
    for arm in review["arms"]:
        split = split_gain(review["base_cohort_volumes"], arm["cohort_volumes"], arm["chosen"],
                           None if arm["arm"] == "none" else none)
        others = "n/a" if split["others_vs_none"] is None else f"{split['others_vs_none']:+.4f}"
        gain = arm["mean_dice"] - review["base_mean_dice"]
        per = f"{gain / arm['slices']:+.4f}" if arm["slices"] else "n/a"
        cohort_gain = arm["cohort_mean_dice"] - review["base_cohort_dice"]
        lines.append(f"| {arm['arm']} | {arm['slices']} | {len(arm['chosen'])} | {arm['mean_dice']:.3f} | "
                     f"{gain:+.3f} | {per} | {arm['cohort_mean_dice']:.3f} | {cohort_gain:+.4f} | "
                     f"{split['corrections']:+.3f} | {others} | {arm['train_wall_seconds']:.0f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="review_sim", description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="a plcl bench method folder (runs/seedS/METHOD)")
    parser.add_argument("out", type=Path)
    parser.add_argument("--bench", type=Path, help="the bench folder (default: three levels above RUN)")
    parser.add_argument("--slices", type=int, default=10, metavar="K")
    parser.add_argument("--arms", default="uncertain,random")
    parser.add_argument("--minutes", type=float, default=20.0)
    parser.add_argument("--iterations", type=int)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--draw", type=int, default=0, help="another draw of the random arm's slices (0: the first)")
    parser.add_argument("--retrain-seed", type=int, help="the retrain's seed (default: the run's): the same slices "
                                                           "retrained again, to measure what one retrain varies")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a setting of the retrain (plcl train --set), e.g. slice_position_balance=true")
    parser.add_argument("--resegment", action="store_true",
                        help="score OUT's arms again as if the retrain segmented the corrected volumes too "
                             "(no retrain)")
    args = parser.parse_args(argv)
    arms = [a for a in args.arms.split(",") if a]
    unknown = [a for a in arms if a not in ARMS]
    if unknown or args.slices < 1:
        parser.error(f"--arms from {', '.join(ARMS)}; --slices at least 1")
    bench, seed, cases = bench_run(args.run, args.bench)
    if args.resegment:
        if not (args.out / "review.json").is_file():
            parser.error(f"{args.out / 'review.json'}: no simulated review to score again (run the arms first)")
        review = rescore_resegmented(args.run, args.out, bench["data"], args.device)
        for arm in review["arms"]:
            print(f"{arm['arm']}: cohort {arm['cohort_mean_dice']:.4f}, "
                  f"resegmented {arm['cohort_resegmented_mean_dice']:.4f}")
        return 0
    method = args.run.name
    (base,) = [r for r in bench["runs"] if r["seed"] == seed and r["method"] == method]
    args.eval_split = bench["protocol"]["eval_split"]
    summary = json.loads((args.run / "train" / SUMMARY_FILE).read_text())
    slices = ranked_slices(summary, set(cases["unlabeled"]))
    features = None
    if SIGNAL_ARMS & set(arms):
        signals = cohort_signals(args.run / "train" / MODEL_FILE, summary, set(slices),
                                 disagreement="disagreement_path" in arms)
        add_signals(slices, signals)
        features = {name: signals[name]["features"] for name in slices}
    candidates = candidate_slices(slices)
    table = [e["name"] for e in review_order(summary["volumes"], summary.get("estimate") != "off")
             if e["name"] in set(cases["unlabeled"])]
    args.out.mkdir(parents=True, exist_ok=True)
    before = cohort_volume_dice(args.run, None, {}, bench["data"])
    review = {"run": str(args.run), "seed": seed, "k": args.slices, "eval_split": args.eval_split,
              "base_mean_dice": base["mean_dice"], "base_cohort_dice": float(np.mean(list(before.values()))),
              "base_cohort_volumes": before,
              "retrain_settings": args.set, "date": time.strftime("%Y-%m-%d %H:%M"), "arms": []}
    for arm in arms:
        chosen = choose(arm, candidates, args.slices, seed, table, args.draw, features)
        name = recorded_name(arm, args.draw, args.retrain_seed)
        review["arms"].append(run_arm(name, chosen, args.run, {"seed": seed, "cases": cases}, bench["data"],
                                      args.out, args))
        write_json(args.out / "review.json", review)
        with atomic_path(args.out / "review.md") as tmp, open(tmp, "w") as f:
            f.write(markdown(review))
    print(markdown(review))
    return 0


if __name__ == "__main__":
    sys.exit(main())
