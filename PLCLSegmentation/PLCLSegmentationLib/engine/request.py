"""A training request (TrainJob) and building one from the options of ``plcl train``; job.json for --resume."""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import protocol, slicing
from .config import TrainConfig, parse_overrides
from .errors import ConfigError, InputError
from .protocol import ANNOTATED_SLICES_ORDER, BUDGETS, DEFAULT_BUDGET


@dataclass
class TrainJob:
    """A training request, as given on the command line (saved as job.json for --resume)."""

    labeled: list[tuple[str, str]]
    unlabeled: list[str]
    out: str
    config: TrainConfig
    class_names: dict[int, str] | None = None  # from a dataset.json
    init_model: str | None = None
    #: One ``--annotated-slices`` value per annotated volume (slicing.py): all, labelled or indices;
    #: in the job's order of annotated volumes: ``labeled`` pairs, then ``labeled_frames``.
    annotated_slices: list[str] = field(default_factory=list)
    #: Annotated frames of 4D images (IMAGE, FRAME, LABEL): ``--labeled-frame``.
    labeled_frames: list[tuple[str, int, str]] = field(default_factory=list)
    #: ``--format``: how the final predictions are written (run/writers.py); ``--dicom-seg-frames``.
    formats: list[str] = field(default_factory=lambda: list(protocol.DEFAULT_OUTPUT_FORMATS))
    dicom_seg_frames: str = protocol.DEFAULT_DICOM_SEG_FRAMES

    def annotated_count(self) -> int:
        return len(self.labeled) + len(self.labeled_frames)

    def slice_specs(self) -> list[str]:
        return list(self.annotated_slices) or [slicing.ALL] * self.annotated_count()

    def to_dict(self) -> dict[str, Any]:
        return {"labeled": [list(p) for p in self.labeled], "unlabeled": self.unlabeled, "out": self.out,
                "labeled_frames": [[image, int(frame), label] for image, frame, label in self.labeled_frames],
                "config": self.config.to_dict(), "init_model": self.init_model,
                "annotated_slices": self.slice_specs(), "formats": list(self.formats),
                "dicom_seg_frames": self.dicom_seg_frames,
                "class_names": None if self.class_names is None else {str(k): v for k, v in self.class_names.items()}}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainJob:
        names = d.get("class_names")
        frames = [(str(image), int(frame), str(label)) for image, frame, label in d.get("labeled_frames") or []]
        return cls([tuple(p) for p in d["labeled"]], list(d["unlabeled"]), d["out"],
                   TrainConfig.from_dict(d["config"]), None if names is None else {int(k): v for k, v in names.items()},
                   d.get("init_model"), list(d.get("annotated_slices") or []), frames,
                   list(d.get("formats") or protocol.DEFAULT_OUTPUT_FORMATS),
                   str(d.get("dicom_seg_frames") or protocol.DEFAULT_DICOM_SEG_FRAMES))

    def inputs(self) -> list[str]:
        """Every file the job reads."""
        return ([p for pair in self.labeled for p in pair] + [p for image, _, label in self.labeled_frames
                                                              for p in (image, label)]
                + self.unlabeled + ([self.init_model] if self.init_model else []))

    def absolute(self) -> TrainJob:
        """Every path absolute, so job.json (and --resume) work from any working folder."""
        def full(path: str) -> str:
            return os.path.abspath(path)

        return dataclasses.replace(self, labeled=[(full(a), full(b)) for a, b in self.labeled],
                                   labeled_frames=[(full(a), f, full(b)) for a, f, b in self.labeled_frames],
                                   unlabeled=[full(p) for p in self.unlabeled], out=full(self.out),
                                   init_model=full(self.init_model) if self.init_model else None)


def job_digest(job: TrainJob) -> str:
    """What makes a run this run: its inputs, settings and classes (not where its folder lies, nor the
    device it continues on); a checkpoint records it, so that --resume refuses another run's."""
    record = job.to_dict()
    record.pop("out")
    record["config"] = {k: v for k, v in record["config"].items() if k != "device"}
    return hashlib.sha256(json.dumps(record, sort_keys=True, default=str).encode()).hexdigest()[:16]


def read_job(folder: str | os.PathLike[str]) -> TrainJob:
    """The job of the run in ``folder`` (its job.json), to continue it there."""
    job_file = Path(folder) / "job.json"
    if not job_file.is_file():
        raise InputError(str(job_file), "not found; --resume needs the output folder of an earlier run")
    try:
        job = TrainJob.from_dict(json.loads(job_file.read_text()))
    except (ValueError, KeyError, TypeError) as error:
        problem = error if isinstance(error, ConfigError) else f"{type(error).__name__}: {error}"
        raise InputError(str(job_file), f"is not a job file of this tool ({problem})") from None
    return dataclasses.replace(job, out=os.path.abspath(folder))


@dataclass
class TrainOptions:
    """The options of ``plcl train``, typed: what a training request is built from, by the command line
    (``from_namespace``) or by a program (the demo) alike, through the same checks."""

    out: str | None = None
    labeled: list[tuple[str, str]] = field(default_factory=list)
    #: (IMAGE, FRAME, LABEL) of --labeled-frame; FRAME as text, checked here.
    labeled_frame: list[tuple[str, str, str]] = field(default_factory=list)
    annotated_slices: list[str] = field(default_factory=list)
    unlabeled: list[str] = field(default_factory=list)
    data: str | None = None
    labeled_cases: str | None = None
    unlabeled_split: str | None = None
    unlabeled_cases: str | None = None
    n_unlabeled: int | None = None
    budget: str | None = None
    iterations: int | None = None
    minutes: float | None = None
    seed: int | None = None
    resume: str | None = None
    init_model: str | None = None
    overrides: list[str] = field(default_factory=list)  # --set KEY=VALUE
    device: str | None = None
    format: list[str] = field(default_factory=list)  # --format (repeatable); none: the default
    dicom_seg_frames: str | None = None

    @classmethod
    def from_namespace(cls, args: argparse.Namespace) -> TrainOptions:
        names = {f.name for f in dataclasses.fields(cls)} - {"overrides"}
        return cls(**{name: getattr(args, name) for name in names}, overrides=list(args.set))


def make_train_job(options: TrainOptions):
    from .files.dataset import read_dataset
    from .request import TrainJob

    check_train_arguments(options)
    if options.resume:
        from .request import read_job

        job = read_job(options.resume)
        if options.device:
            job.config = dataclasses.replace(job.config, device=options.device).validated()
        return job
    labeled = [tuple(p) for p in options.labeled]
    frames = [(image, frame_index(frame), label) for image, frame, label in options.labeled_frame]
    unlabeled = list(options.unlabeled)
    names = None
    if options.data:
        dataset = read_dataset(options.data)
        names = dataset.label_names
        if options.labeled_cases:
            labeled += [dataset.labeled_pair(c) for c in options.labeled_cases.split(",") if c]
        chosen = {Path(p[0]).resolve() for p in labeled}
        if options.unlabeled_cases:
            unlabeled += [dataset.image(c) for c in options.unlabeled_cases.split(",") if c]
        if options.unlabeled_split:
            unlabeled += [p for p in dataset.split_images(options.unlabeled_split) if Path(p).resolve() not in chosen]
        if options.n_unlabeled is not None:
            unlabeled = unlabeled[: options.n_unlabeled]
    elif options.labeled_cases or options.unlabeled_split or options.unlabeled_cases:
        raise ConfigError("--labeled-cases, --unlabeled-split and --unlabeled-cases need --data DIR")
    if not labeled and not frames:
        raise ConfigError("give at least one annotated volume: --labeled IMAGE LABEL, --labeled-frame IMAGE FRAME "
                          "LABEL, or --data DIR --labeled-cases A")
    if not options.out:
        raise ConfigError("--out DIR is required")
    # Given in protocol.ANNOTATED_SLICES_ORDER; the job keeps its annotated volumes as labeled (pairs,
    # then cases), then labeled_frames.
    pairs = len(options.labeled)
    given = annotated_slice_specs(options.annotated_slices, len(labeled) + len(frames))
    specs = given[:pairs] + given[pairs + len(frames):] + given[pairs:pairs + len(frames)]
    sparse = any(spec != slicing.ALL for spec in specs)  # unannotated slices: pseudo-label rounds
    # The other frames of an annotated 4D image are unannotated volumes.
    has_unlabeled = bool(unlabeled) or bool(frames) or sparse
    return TrainJob(labeled, unlabeled, options.out, train_config(options, has_unlabeled), names,
                    options.init_model, specs, frames, list(options.format or protocol.DEFAULT_OUTPUT_FORMATS),
                    options.dicom_seg_frames or protocol.DEFAULT_DICOM_SEG_FRAMES).absolute()


def frame_index(text: str) -> int:
    """FRAME of --labeled-frame: a 0-based index (checked against the image when it is read)."""
    try:
        index = int(text)
    except ValueError:
        index = -1
    if index < 0:
        raise ConfigError(f"--labeled-frame: FRAME '{text}' must be a frame index, 0 or more")
    return index


def annotated_slice_specs(values: list[str], count: int) -> list[str]:
    """One ``--annotated-slices`` value per annotated volume, each checked for its syntax (the
    indices are checked against each image when it is read)."""
    if len(values) > 1 and len(values) != count:
        raise ConfigError(f"{len(values)} --annotated-slices values for {count} annotated volumes; give one "
                          f"for all of them or one per volume ({', then '.join(ANNOTATED_SLICES_ORDER)})")
    specs = values * count if len(values) == 1 else list(values) or [slicing.ALL] * count
    try:
        return [_normal_spec(spec) for spec in specs]
    except slicing.SliceSpecError as error:
        raise ConfigError(str(error)) from None


def _normal_spec(spec: str) -> str:
    """The value in its usual form, its syntax checked; a list longer than any volume's slices is left
    as given (expanding it could exhaust memory): it is refused against the image when that is read."""
    if spec.strip().lower() in (slicing.ALL, slicing.LABELLED, "labeled"):
        return slicing.spec_text(slicing.parse_spec(spec))
    ranges = slicing.parse_ranges(spec)
    if sum(high - low + 1 for low, high in ranges) > slicing.EXPAND_LIMIT:
        return ",".join(f"{low}-{high}" if high > low else str(low) for low, high in ranges)
    return slicing.spec_text(slicing.parse_spec(spec))


def train_config(options: TrainOptions, has_unlabeled: bool = True) -> TrainConfig:
    """The training schedule of ``plcl train``: the budget, --iterations spread over it, and with
    --init-model the warm-start schedule (the engine alone decides it; the Slicer module passes
    the same budget and iterations as for a first training, plus --init-model)."""
    # The options win over --set of the same field (one dict: a field given twice is no TypeError).
    named = {"seed": options.seed, "device": options.device}
    overrides = {**parse_overrides(options.overrides), **{k: v for k, v in named.items() if v is not None}}
    if "budget" in overrides:  # a preset, not a field: it sets many fields at once
        raise ConfigError(f"--set budget={overrides['budget']!r}: the budget is chosen with --budget "
                          f"({', '.join(BUDGETS)})")
    config = TrainConfig.from_budget(options.budget or DEFAULT_BUDGET, **overrides)
    if options.iterations is not None:
        config = config.with_iterations(options.iterations)
    if options.init_model:
        config = fine_tuning_schedule(config)
    if options.minutes is not None:
        config = dataclasses.replace(config, time_budget_s=60.0 * options.minutes)
    if not has_unlabeled:
        config = config.supervised_only()
    if not config.time_budget_s and config.snapshots > config.total_iterations:
        config = dataclasses.replace(config, snapshots=config.total_iterations)  # one model per iteration at most
    return config.validated()


def check_train_arguments(options: TrainOptions) -> None:
    """Values argparse cannot check by type alone: a usage error (exit 2) before anything is read."""
    if options.iterations is not None and options.iterations < 1:
        raise ConfigError(f"--iterations {options.iterations}: must be at least 1")
    low, high = MINUTES_RANGE
    if options.minutes is not None and not (low <= options.minutes <= high):  # NaN fails too
        raise ConfigError(f"--minutes {options.minutes:g}: must be from {low:g} to {high:g} minutes (a year)")
    if options.iterations is not None and options.minutes is not None:
        raise ConfigError("give --iterations or --minutes, not both")
    if options.n_unlabeled is not None and options.n_unlabeled < 0:
        raise ConfigError(f"--n-unlabeled {options.n_unlabeled}: must be 0 or more")
    given = {"--labeled": options.labeled, "--labeled-frame": options.labeled_frame,
             "--unlabeled": options.unlabeled, "--data": options.data, "--init-model": options.init_model,
             "--set": options.overrides, "--iterations": options.iterations is not None,
             "--minutes": options.minutes is not None, "--budget": options.budget, "--out": options.out,
             "--seed": options.seed is not None, "--annotated-slices": options.annotated_slices,
             "--labeled-cases": options.labeled_cases, "--unlabeled-split": options.unlabeled_split,
             "--unlabeled-cases": options.unlabeled_cases, "--n-unlabeled": options.n_unlabeled is not None,
             "--format": options.format, "--dicom-seg-frames": options.dicom_seg_frames}
    extra = [name for name, value in given.items() if value]
    if options.resume and extra:
        raise ConfigError(f"--resume DIR continues a run as it was started (in DIR, with its job.json); "
                          f"{', '.join(extra)} cannot change it: give --resume alone (with --device, --events)")


#: --minutes: below 6 seconds a training ends after its first step, a model that has learnt nothing.
MINUTES_RANGE = (0.1, 60.0 * 24 * 366)


def fine_tuning_schedule(config: TrainConfig) -> TrainConfig:
    """Warm start: the model already segments, so a quarter of the warm-up, one pseudo-label round and a
    third of the learning rate (at the full rate a short fine-tune ends with BatchNorm statistics that lag
    the still-moving weights: the saved model under-segmented in the cine demo). With warm_start_labels
    "reviewed" (the default) the model it starts from labels the round, and the warm-up's iterations but one
    join the round."""
    warmup = max(1, config.warmup_iterations // 4)
    joint = config.joint_iterations
    if config.warm_start_labels == "reviewed" and config.rounds:
        warmup, joint = 1, joint + warmup - 1  # its round is labelled by the model it starts from (Trainer)
    return dataclasses.replace(config, warmup_iterations=warmup, joint_iterations=joint,
                               rounds=min(1, config.rounds), learning_rate=config.learning_rate / 3)
