"""``plcl bench``: the method against its baselines on a dataset folder, at the same budget.

Each method trains in its own child process (``plcl train``), so its wall time and peak resident
memory are its own; the evaluation split is then segmented with ``plcl predict`` (timed per volume)
and scored with ``plcl evaluate``'s metrics. Intermediate models give Dice against training time.
Outputs in OUT: ``results.json``, ``results.md``, ``dice_vs_time.png``, ``examples.png``, ``runs/``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import re
import shutil
import statistics
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ... import __version__
from .. import slicing
from ..config import PAPER_CONTRASTIVE_WEIGHT, TrainConfig, parse_overrides
from ..errors import ConfigError
from ..evaluation.report import evaluate
from ..events import EventSink
from ..files.dataset import Dataset, read_dataset
from ..files.volumes import atomic_path
from ..protocol import (
    BUDGETS,
    DEFAULT_BUDGET,
    DEFAULT_DEVICE,
    MODEL_FILE,
    PREDICTIONS_FOLDER,
    SNAPSHOTS_FOLDER,
    SUMMARY_FILE,
    TRAINING_FILE,
    device_argument,
)
from .bench_protocol import add_protocol_arguments, annotation, end_diastolic
from .child import run_child
from .machine import cpu_name

METHODS: dict[str, dict[str, Any]] = {
    # No pseudo-label rounds: also none on the unannotated slices of partly annotated cases.
    "supervised": {"label": "supervised only", "unlabeled": False, "set": {"rounds": 0}},
    # The engine's default recipe since 2026-12-06 (config.contrastive_weight); set here so its rows mean the same
    # before and after.
    "self_training": {"label": "self-training (pseudo-labels, no contrastive loss; the default)", "unlabeled": True,
                      "set": {"contrastive_weight": 0, "pseudo_segmentation_weight": 1}},
    "plcl": {"label": "pseudo-labels + local contrastive loss (the paper's weight)", "unlabeled": True,
             "set": {"contrastive_weight": PAPER_CONTRASTIVE_WEIGHT}},
    # The recipe as published: pseudo-labels in the contrastive loss only, the paper's augmentation.
    "plcl_paper": {"label": "the paper's recipe (pseudo-labels in the contrastive loss only)", "unlabeled": True,
                   "set": {"contrastive_weight": PAPER_CONTRASTIVE_WEIGHT, "pseudo_segmentation_weight": 0,
                           "augmentation": "paper", "rotation_degrees": 15, "scale_range": [0.95, 1.05],
                           "largest_component": False, "teacher_ema": 0}},
}
DEFAULT_METHODS = ("supervised", "self_training", "plcl")


def add_bench_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, metavar="DIR", help="a dataset folder: dataset.json, images/, labels/")
    parser.add_argument("--out", default="bench_output", metavar="DIR")
    parser.add_argument("--labeled-cases", metavar="A,B", help="annotated cases (default: whole patients, see below)")
    parser.add_argument("--n-labeled-patients", type=int, default=1, metavar="N",
                        help="annotate all cases of N patients drawn from the unlabeled split (per seed)")
    parser.add_argument("--labeled-slices", type=int, metavar="K",
                        help="annotate only K slices of each annotated case, spread through its labelled extent "
                        "and drawn by seed (the others are trained on as unannotated)")
    parser.add_argument("--as-whole-volumes", action="store_true",
                        help="with --labeled-slices: annotate whole volumes holding at most as many slices in "
                        "all instead (the same cases first), to compare at the same number of slices")
    add_protocol_arguments(parser)
    parser.add_argument("--seeds", default="0,1", metavar="S,T", help="seeds: training, and patient choice")
    parser.add_argument("--unlabeled-split", default="train", metavar="SPLIT")
    parser.add_argument("--n-unlabeled", type=int, metavar="K",
                        help="unannotated cases: K of the split's other patients, drawn by seed (default: all)")
    parser.add_argument("--eval-split", default="val", metavar="SPLIT")
    parser.add_argument("--minutes", type=float, default=20.0, help="training budget per method (wall clock)")
    parser.add_argument("--iterations", type=int, help="a budget in iterations instead of minutes")
    parser.add_argument("--budget", choices=list(BUDGETS), default=DEFAULT_BUDGET,
                        help="preset for patch and batch sizes")
    parser.add_argument("--methods", default=",".join(DEFAULT_METHODS), metavar="M,N",
                        help=f"of {', '.join(METHODS)}")
    parser.add_argument("--snapshots", type=int, default=3, help="intermediate models for the Dice-time curve")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="configuration for all methods and the throughput comparison")
    parser.add_argument("--variant", action="append", default=[], metavar="[METHOD+]NAME:KEY=VALUE[,KEY=VALUE]",
                        help="also run METHOD (default plcl) with these settings, as method METHOD+NAME: an "
                        "ablation, scored per seed against METHOD in results.md (repeatable)")
    parser.add_argument("--throughput-iterations", type=int, default=12,
                        help="iterations per variant of the throughput comparison (0: skip)")
    parser.add_argument("--throughput-compile", action=argparse.BooleanOptionalAction, default=True,
                        help="time torch.compile too (its compilation alone takes about half a minute on a CPU)")
    parser.add_argument("--propagation-frames", type=int, default=30, metavar="N",
                        help="time plcl predict on a SYNTHETIC N-frame cine sequence of 10 x 224 x 224 voxels "
                        "(at least 4; 0: skip)")
    parser.add_argument("--propagation-model", metavar="MODEL",
                        help="the model for that timing (default: the first method's final model of the first seed)")
    parser.add_argument("--device", default=DEFAULT_DEVICE, type=device_argument, metavar="DEVICE")
    parser.add_argument("--events", choices=["jsonl"], default=None)


def parse_variants(items: list[str], budget: str) -> dict[str, dict[str, Any]]:
    """``[METHOD+]NAME:KEY=VALUE,KEY=VALUE`` of --variant as {METHOD+NAME: overrides} (METHOD: plcl
    unless named), every setting checked."""
    variants: dict[str, dict[str, Any]] = {}
    for item in items:
        name, sep, settings = item.partition(":")
        if not sep or not re.fullmatch(r"([A-Za-z0-9_]+\+)?[A-Za-z0-9_-]+", name) or not settings:
            raise ConfigError(f"--variant {item}: expected NAME:KEY=VALUE[,KEY=VALUE] (or METHOD+NAME:...) with "
                              "NAME of letters, digits, _ or -")
        name = name if "+" in name else f"plcl+{name}"
        if name.split("+")[0] not in METHODS:
            raise ConfigError(f"--variant {item}: unknown method {name.split('+')[0]!r}; choose from "
                              f"{', '.join(METHODS)}")
        if name in variants:
            raise ConfigError(f"--variant {item}: the name {name!r} is given twice")
        # Commas separate settings only where a KEY= follows, so list values keep theirs.
        overrides = parse_overrides(re.split(r",(?=[A-Za-z_]+=)", settings), "--variant")
        if "budget" in overrides:  # a preset of many fields, not a field: bench --budget sets it for all
            raise ConfigError(f"--variant {item}: the budget is chosen with --budget, for every method")
        TrainConfig.from_budget(budget, **overrides)  # a bad value fails now, not after other runs
        variants[name] = overrides
    return variants


def method_specs(methods: list[str], variants: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The specification of each method to run: the named ones, then plcl+NAME for each variant."""
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ConfigError(f"unknown methods {unknown}; choose from {', '.join(METHODS)}")
    specs = {m: METHODS[m] for m in methods}
    for name, overrides in variants.items():
        method, short = name.split("+", 1)
        base = METHODS[method]
        settings = ", ".join(f"{k}={json.dumps(v)}" for k, v in overrides.items())
        specs[name] = {**base, "label": f"{base['label']} + {short} ({settings})",
                       "set": {**base["set"], **overrides}, "variant_of": method}
    return specs


def check_method_configs(specs: dict[str, dict[str, Any]], args: argparse.Namespace, seeds: list[int],
                         sparse: bool) -> None:
    """Each method's training configuration as its child run will build it (budget, --iterations or
    --minutes, --set, the method's and the variant's settings), checked before any run: a variant
    that cannot run fails now, not after the runs before it."""
    from ..request import TrainOptions, check_train_arguments, train_config

    for method, spec in specs.items():
        own = [f"{key}={json.dumps(value)}" for key, value in spec["set"].items()]
        overrides = [f"snapshots={args.snapshots}", *args.set, *own]
        for seed in seeds:
            options = TrainOptions(out="-", budget=args.budget, iterations=args.iterations or None,
                                   minutes=None if args.iterations else args.minutes, seed=seed, device=args.device,
                                   overrides=overrides)
            try:
                check_train_arguments(options)
                train_config(options, has_unlabeled=bool(spec["unlabeled"]) or sparse)
            except ConfigError as error:
                short = method[len("plcl+"):] if method.startswith("plcl+") else method
                name = f"--variant {short}" if spec.get("variant_of") else f"method {method}"
                raise ConfigError(f"{name}: {error}") from None


# --- cases ----------------------------------------------------------------------------------------


def patient_of(case: str) -> str:
    """Cases of one patient (e.g. the ED and ES frames ``patient003_frame01``, ``..._frame02``)."""
    return re.sub(r"_(frame|phase|time|t)\d+$|_(ed|es)$", "", case, flags=re.IGNORECASE)


@dataclass
class Protocol:
    labeled: list[str]
    unlabeled: list[str]
    evaluation: list[str]
    #: With --labeled-slices: the annotated slices of each annotated case (file indices); else None.
    slices: dict[str, list[int]] | None = None
    #: Slices annotated in all (with --labeled-slices; whole volumes: their slice counts).
    annotated_slices: int | None = None


def choose_cases(dataset: Dataset, args: argparse.Namespace, seed: int) -> Protocol:
    pool = dataset.split(args.unlabeled_split)
    wanted = annotation(args)  # --protocol and --n-labeled-volumes as the options they stand for
    if args.labeled_cases:
        labeled = [c for c in args.labeled_cases.split(",") if c]
    else:
        candidates = pool
        if wanted.ed_only:
            candidates = end_diastolic(dataset, [c for c in pool if dataset.label(c)])
        patients = sorted({patient_of(c) for c in candidates if dataset.label(c)})
        if len(patients) < wanted.n_patients:
            raise ConfigError(f"only {len(patients)} labelled patients in split '{args.unlabeled_split}'")
        chosen = set(random.Random(seed).sample(patients, wanted.n_patients))
        labeled = [c for c in candidates if patient_of(c) in chosen]
    slices, total = None, None
    if wanted.labeled_slices is not None:
        from .bench_slices import case_slices, sparse_slices, whole_volumes

        if wanted.labeled_slices < 1:
            raise ConfigError("--labeled-slices must be at least 1")
        slices = sparse_slices(dataset, labeled, wanted.labeled_slices, seed)
        total = sum(len(v) for v in slices.values())
        if args.as_whole_volumes:
            sizes: dict[str, int] = {}
            labeled = whole_volumes(dataset, labeled, pool, total, seed,
                                    lambda case: sizes.setdefault(case, case_slices(dataset, case)[0]))
            slices, total = None, sum(sizes[c] for c in labeled)
    elif args.as_whole_volumes:
        raise ConfigError("--as-whole-volumes compares with --labeled-slices K; give both")
    else:
        from .bench_slices import case_slices

        total = sum(case_slices(dataset, case)[0] for case in labeled)
    # The rest of the split; an end-diastolic protocol leaves the patient's other frames unannotated in it.
    labeled_patients = {patient_of(c) for c in labeled}
    rest = ([c for c in pool if c not in labeled] if wanted.ed_only
            else [c for c in pool if patient_of(c) not in labeled_patients])
    if args.n_unlabeled is not None and args.n_unlabeled < 0:
        raise ConfigError(f"--n-unlabeled {args.n_unlabeled}: must be 0 or more")
    count = len(rest) if args.n_unlabeled is None else min(args.n_unlabeled, len(rest))
    unlabeled = random.Random(seed + 1000).sample(rest, count)
    return Protocol(labeled, sorted(unlabeled), dataset.split(args.eval_split), slices, total)


# --- child processes ------------------------------------------------------------------------------




# --- one method -------------------------------------------------------------------------------


def _set_args(items: dict[str, Any]) -> list[str]:
    return [arg for key, value in items.items() for arg in ("--set", f"{key}={json.dumps(value)}")]


def run_method(method: str, spec: dict[str, Any], protocol: Protocol, dataset: Dataset, args: argparse.Namespace,
               seed: int, folder: Path, sink: EventSink) -> dict[str, Any]:
    shutil.rmtree(folder, ignore_errors=True)  # this bench's own earlier run of the method: runs need fresh folders
    folder.mkdir(parents=True, exist_ok=True)
    train = ["train", "--data", str(dataset.root), "--labeled-cases", ",".join(protocol.labeled),
             "--out", str(folder / "train"), "--budget", args.budget, "--seed", str(seed), "--device", args.device,
             "--set", f"snapshots={args.snapshots}", *[a for item in args.set for a in ("--set", item)],
             *_set_args(spec["set"])]
    if spec["unlabeled"]:
        train += ["--unlabeled-cases", ",".join(protocol.unlabeled)]
    if protocol.slices is not None:  # one value per --labeled-cases case, in order
        train += [arg for case in protocol.labeled
                  for arg in ("--annotated-slices", slicing.spec_text(protocol.slices[case]))]
    train += ["--iterations", str(args.iterations)] if args.iterations else ["--minutes", str(args.minutes)]
    sink.emit("stage", stage=f"bench:{method}:train", round=seed, total=0)
    trained = run_child(train, folder / "train.log")
    training = json.loads((folder / "train" / TRAINING_FILE).read_text())

    images = [dataset.image(c) for c in protocol.evaluation]
    curve = []
    snapshots = sorted((folder / "train" / SNAPSHOTS_FOLDER).glob("model_*.pt"))
    for model in [*snapshots, folder / "train" / MODEL_FILE]:
        final = model.name == MODEL_FILE
        out = folder / ("predict" if final else f"predict_{model.stem}")
        sink.emit("stage", stage=f"bench:{method}:predict", round=seed, total=len(images))
        # An intermediate model is scored only: its predictions skip the quality estimate's mirrored passes.
        estimate = [] if final else ["--estimate", "off"]
        predicted = run_child(["predict", "--model", str(model), "--out", str(out), "--device", args.device,
                               *estimate, *images], folder / f"{out.name}.log")
        report = evaluate(str(out), data=str(dataset.root), split=args.eval_split)
        info_seconds = _model_train_seconds(model) if not final else training["train_seconds"]
        curve.append({"train_seconds": info_seconds, "mean_dice": report["mean"]["mean_dice"]})
        if final:
            summary = json.loads((out / SUMMARY_FILE).read_text())
            seconds = [v["seconds"] for v in summary["volumes"]]
            result = {
                "method": method, "seed": seed,
                "dice": report["mean"]["dice"], "mean_dice": report["mean"]["mean_dice"],
                "hd95_mm": report["mean"]["hd95_mm"], "mean_hd95_mm": report["mean"]["mean_hd95_mm"],
                "per_case_dice": {c: v["mean_dice"] for c, v in report["cases"].items()},
                "train_seconds": training["train_seconds"], "train_wall_seconds": trained["seconds"],
                "iterations": training["iterations"], "slices_per_s": training["slices_per_s"],
                "predict_seconds_per_volume": statistics.mean(seconds) if seconds else None,
                "peak_rss_mb_train": trained["peak_rss_mb"], "peak_rss_mb_predict": predicted["peak_rss_mb"],
                "predictions": str(out / PREDICTIONS_FOLDER),
                "quality": _quality(summary, report),
            }
        else:
            for path in (out / PREDICTIONS_FOLDER).glob("*"):  # keep only the scores of intermediate models
                path.unlink()
    result["curve"] = curve
    return result


def _quality(summary: dict[str, Any], report: dict[str, Any]) -> dict[str, Any]:
    """The estimated Dice of the final model's predictions against their true Dice (bench_quality.py)."""
    from .bench_quality import quality_metrics, quality_pairs

    pairs = quality_pairs(summary, report)
    return {**quality_metrics(pairs), "points": pairs}


def _model_train_seconds(path: Path) -> float:
    from ..method.modelfile import read_model

    return float(read_model(path)[0].training.get("train_seconds", 0.0))


# --- the whole benchmark ------------------------------------------------------------------------


def run_bench(args: argparse.Namespace, sink: EventSink, cancel: threading.Event) -> dict[str, Any]:
    started = time.monotonic()
    dataset = read_dataset(args.data)
    specs = method_specs([m for m in args.methods.split(",") if m], parse_variants(args.variant, args.budget))
    methods = list(specs)
    seeds = [int(s) for s in args.seeds.split(",") if s]
    if args.propagation_frames != 0 and args.propagation_frames < 4:
        raise ConfigError(f"--propagation-frames {args.propagation_frames}: 0 (no timing) or at least 4 frames")
    if args.propagation_frames and args.propagation_model:  # a wrong path would fail only after every run
        from ..method.modelfile import read_model

        read_model(args.propagation_model)
    chosen = {seed: choose_cases(dataset, args, seed) for seed in seeds}  # every check before any output
    check_method_configs(specs, args, seeds, any(p.slices is not None for p in chosen.values()))
    from ..runtime import resolve_device  # torch only once the arguments are checked

    device = resolve_device(args.device)  # an unavailable GPU is refused before any output
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    sink.emit("start", command="bench", version=__version__, device=str(device), out=str(out))
    runs, protocols = [], {seed: protocol.__dict__ for seed, protocol in chosen.items()}
    for seed, protocol in chosen.items():
        for method in methods:
            if cancel.is_set():
                break
            runs.append(run_method(method, specs[method], protocol, dataset, args, seed,
                                   out / "runs" / f"seed{seed}" / method, sink))
            _write_results(out, args, dataset, specs, seeds, protocols, runs, throughput=None)
    throughput = None
    if args.throughput_iterations > 0 and not cancel.is_set():
        from .throughput import measure_throughput

        sink.emit("stage", stage="bench:throughput", round=0, total=0)
        throughput = measure_throughput(dataset, protocols[seeds[0]], args)
    propagation = None
    model = args.propagation_model or (str(out / "runs" / f"seed{seeds[0]}" / methods[0] / "train" / MODEL_FILE)
                                       if runs else None)
    if args.propagation_frames > 0 and model and not cancel.is_set():
        from .propagation import measure_propagation

        sink.emit("stage", stage="bench:propagation", round=0, total=0)
        propagation = measure_propagation(model, out / "propagation", args.device, frames=args.propagation_frames)
    results = _write_results(out, args, dataset, specs, seeds, protocols, runs, throughput, propagation)
    from .bench_report import write_figures

    write_figures(out, results, dataset)
    sink.emit("done", out=str(out), elapsed_s=round(time.monotonic() - started, 2))
    return results


def aggregate(runs: list[dict[str, Any]], specs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    table = {}
    for method, spec in specs.items():
        mine = [r for r in runs if r["method"] == method]
        if not mine:
            continue

        def stats(key: str, rows: list[dict[str, Any]] = mine) -> dict[str, float | None]:
            values = [r[key] for r in rows if r.get(key) is not None]
            if not values:
                return {"mean": None, "std": None}
            return {"mean": statistics.mean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0}

        structures = list(mine[0]["dice"])
        table[method] = {
            "label": spec["label"], "n_seeds": len(mine), "variant_of": spec.get("variant_of"),
            "mean_dice": stats("mean_dice"), "mean_hd95_mm": stats("mean_hd95_mm"),
            "dice": {s: stats("d", [{"d": r["dice"][s]} for r in mine]) for s in structures},
            "train_seconds": stats("train_seconds"), "iterations": stats("iterations"),
            "slices_per_s": stats("slices_per_s"), "predict_seconds_per_volume": stats("predict_seconds_per_volume"),
            "peak_rss_mb_train": stats("peak_rss_mb_train"), "peak_rss_mb_predict": stats("peak_rss_mb_predict"),
        }
    return table


def machine_description() -> str:
    import torch

    from ..runtime import native_cpu_bf16

    gpu = f", GPU {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""
    bf16 = "native bf16" if native_cpu_bf16() else "no native bf16"
    return f"{cpu_name()} ({bf16}), {os.cpu_count()} cores{gpu}, torch {torch.__version__}, {platform.system()}"


def _write_results(out: Path, args: argparse.Namespace, dataset: Dataset, specs: dict[str, dict[str, Any]],
                   seeds: list[int],
                   protocols: dict[int, Any], runs: list[dict[str, Any]], throughput: dict[str, Any] | None,
                   propagation: dict[str, Any] | None = None) -> dict[str, Any]:
    wanted = annotation(args)
    results = {
        "version": __version__, "date": time.strftime("%Y-%m-%d %H:%M"), "machine": machine_description(),
        "command": "plcl bench " + " ".join(sys.argv[2:]) if sys.argv[1:2] == ["bench"] else None,
        "dataset": dataset.name, "data": str(dataset.root),
        "protocol": {"eval_split": args.eval_split, "budget_minutes": None if args.iterations else args.minutes,
                     "budget_iterations": args.iterations, "preset": args.budget, "seeds": seeds,
                     "checkpoint": "the last model (no validation-based selection)", "cases": protocols,
                     "name": wanted.name, "end_diastole_only": wanted.ed_only,
                     "n_labeled_patients": None if args.labeled_cases else wanted.n_patients,
                     "n_unlabeled": args.n_unlabeled,
                     "labeled_slices": wanted.labeled_slices, "as_whole_volumes": bool(args.as_whole_volumes)},
        "methods": aggregate(runs, specs), "runs": runs, "throughput": throughput, "propagation": propagation,
    }
    save_results(out, results)
    return results


def save_results(out: Path, results: dict[str, Any]) -> None:
    """``results.json`` and its table ``results.md``, each written atomically."""
    from .bench_report import markdown

    with atomic_path(out / "results.json") as tmp, open(tmp, "w") as f:
        json.dump(results, f, indent=2)
    with atomic_path(out / "results.md") as tmp, open(tmp, "w") as f:
        f.write(markdown(results))
