"""``plcl bench --protocol``: the annotation settings of the paper and of the product, by name.

Each name stands for options of ``choose_cases`` (bench.py), which alone chooses the cases:

- ``one-volume``: the end-diastolic frame of one patient drawn by seed (the paper's "one annotated
  volume"); ``--n-labeled-volumes N`` is the same for N patients (the paper's two volumes: N = 2);
- ``one-patient``: every case (both frames) of one patient, the bench's default;
- ``few-slices``: 3 annotated slices in each case of one patient (``--labeled-slices 3``).

The unannotated cases are every other case of the unlabeled split, the annotated patient's other
frames included. A dataset marks its end-diastolic cases by ``"end_diastole": "SUFFIX"`` in
dataset.json (the name ending of those cases), by case names ending in ``_ED``, or, for ACDC (a
dataset named ``ACDC...``), by ACDC's ``_frame01``.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass

from ..errors import ConfigError
from ..files.dataset import Dataset

PROTOCOLS = {
    "one-volume": "the end-diastolic frame of one patient",
    "one-patient": "every frame of one patient",
    "few-slices": "3 annotated slices in each frame of one patient",
}
FEW_SLICES = 3
#: ACDC's end-diastolic frame, in the layout of a dataset folder (the ED frame is written as _frame01).
ACDC_END_DIASTOLE = "_frame01"


@dataclass(frozen=True)
class Annotation:
    """What the annotated cases are: N patients, all their cases or their end-diastolic one only,
    whole or K slices each; ``name`` is the protocol's name (None for options given one by one)."""

    name: str | None
    n_patients: int
    labeled_slices: int | None
    ed_only: bool


def add_protocol_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--protocol", choices=list(PROTOCOLS),
                        help="annotated cases by name: " + "; ".join(f"{k}: {v}" for k, v in PROTOCOLS.items())
                        + " (one patient drawn by seed; unannotated: the split's other cases)")
    parser.add_argument("--n-labeled-volumes", type=int, metavar="N",
                        help="annotate the end-diastolic frame of N patients drawn by seed (the paper's setting; "
                        "N = 1 is --protocol one-volume)")


def annotation(args: argparse.Namespace) -> Annotation:
    """The annotation the options ask for; a protocol combined with an option it fixes otherwise is
    refused with one line."""
    volumes = getattr(args, "n_labeled_volumes", None)
    protocol = getattr(args, "protocol", None)
    if volumes is not None:
        if volumes < 1:
            raise ConfigError(f"--n-labeled-volumes {volumes}: must be at least 1")
        if protocol is not None:
            raise ConfigError(f"--n-labeled-volumes with --protocol {protocol}: give one of them "
                              "(--protocol one-volume is --n-labeled-volumes 1)")
        _refuse_with(args, "--n-labeled-volumes", slices_allowed=None)
        return Annotation("one-volume" if volumes == 1 else f"{volumes}-volumes", volumes, None, True)
    if protocol is None:
        return Annotation(None, args.n_labeled_patients, args.labeled_slices, False)
    few = protocol == "few-slices"
    _refuse_with(args, f"--protocol {protocol}", slices_allowed=FEW_SLICES if few else None)
    return Annotation(protocol, 1, FEW_SLICES if few else None, protocol == "one-volume")


def _refuse_with(args: argparse.Namespace, what: str, slices_allowed: int | None) -> None:
    if args.labeled_cases:
        raise ConfigError(f"{what} chooses the annotated cases itself; leave out --labeled-cases")
    if args.n_labeled_patients != 1:
        raise ConfigError(f"{what} fixes the annotated patients; leave out --n-labeled-patients "
                          f"{args.n_labeled_patients}")
    if args.labeled_slices is not None and args.labeled_slices != slices_allowed:
        fixed = f"{slices_allowed} slices per case" if slices_allowed else "whole volumes"
        raise ConfigError(f"{what} annotates {fixed}; leave out --labeled-slices {args.labeled_slices}")
    if args.as_whole_volumes:
        raise ConfigError(f"{what} is a protocol of its own; leave out --as-whole-volumes")


def end_diastolic(dataset: Dataset, cases: list[str]) -> list[str]:
    """The end-diastolic cases among ``cases``, by the dataset's marker (see the module's text)."""
    path = dataset.root / "dataset.json"
    suffix = json.loads(path.read_text()).get("end_diastole")
    if suffix is not None and (not isinstance(suffix, str) or not suffix):
        raise ConfigError(f"{path}: 'end_diastole' must be the name ending of the end-diastolic cases, "
                          f"e.g. \"{ACDC_END_DIASTOLE}\", not {suffix!r}")
    if suffix is None:
        if any(case.lower().endswith("_ed") for case in cases):
            suffix = "_ed"
        elif dataset.name.upper().startswith("ACDC"):
            suffix = ACDC_END_DIASTOLE
        else:
            raise ConfigError(f"{path}: no end-diastole marker, which the end-diastolic protocols need: add "
                              f"\"end_diastole\": \"SUFFIX\" (the name ending of those cases, e.g. "
                              f"\"{ACDC_END_DIASTOLE}\") or name them ..._ED")
    chosen = [case for case in cases if case.lower().endswith(suffix.lower())]
    if not chosen:
        raise ConfigError(f"{path}: no labelled case of the split ends in the end-diastole marker {suffix!r}")
    return chosen


def describe(protocol: dict) -> str | None:
    """The protocol's name and meaning for results.md, or None for options given one by one."""
    name = protocol.get("name")
    if not name:
        return None
    meaning = PROTOCOLS.get(name) or f"the end-diastolic frames of {protocol.get('n_labeled_patients')} patients"
    return f"{name} ({meaning})"
