"""``plcl evaluate``: find predictions and references, run the metrics, print and save the report."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from ..errors import ConfigError, InputError
from ..events import EventSink
from ..files.dataset import read_dataset
from ..files.volumes import ClassInfo, atomic_path, volume_name
from ..protocol import METRICS_FILE, PREDICTIONS_FOLDER, SUMMARY_FILE
from .metrics import evaluate_folder, format_table

_VOLUME_SUFFIXES = (".seg.nrrd", ".nii.gz", ".nii", ".nrrd", ".mha", ".mhd")


def _files_by_name(folder: Path) -> dict[str, str]:
    files: dict[str, str] = {}
    for path in sorted(folder.iterdir()):
        if path.is_file() and path.name.lower().endswith(_VOLUME_SUFFIXES) and not path.name.startswith("."):
            files.setdefault(volume_name(path), str(path))
    return files


def _prediction_folder(pred: Path) -> Path:
    """An output folder of train/predict holds its segmentations in predictions/."""
    return pred / PREDICTIONS_FOLDER if (pred / PREDICTIONS_FOLDER).is_dir() else pred


def _classes(pred: Path, label_names: dict[int, str] | None) -> list[ClassInfo]:
    if label_names:
        return [ClassInfo(v, n, (1.0, 1.0, 1.0)) for v, n in sorted(label_names.items()) if v > 0]
    summary = pred / SUMMARY_FILE
    if summary.is_file():
        return _summary_classes(summary)
    raise ConfigError(f"cannot tell the classes of {pred}: it has no summary.json; give --data DIR --split SPLIT")


def _summary_classes(summary: Path) -> list[ClassInfo]:
    """The classes a run's summary.json lists, every entry checked (a damaged file names itself)."""
    try:
        entries = json.loads(summary.read_text()).get("classes")
    except (OSError, ValueError, AttributeError) as error:
        reason = "it is not a JSON object" if isinstance(error, AttributeError) else error
        raise InputError(str(summary), f"cannot be read as a run summary ({reason})") from None
    if not isinstance(entries, list) or not entries:
        raise InputError(str(summary), "lists no classes (\"classes\" must be a non-empty list); give --data DIR "
                                       "--split SPLIT for the classes")
    try:
        classes = [ClassInfo.from_dict(c) for c in entries]
    except (KeyError, TypeError, ValueError, AttributeError) as error:
        raise InputError(str(summary), f"has a malformed class entry ({type(error).__name__}: {error})") from None
    values = [c.value for c in classes]
    names = [c.name.casefold() for c in classes]
    if any(not 1 <= v <= 255 for v in values) or len(set(values)) != len(values) or len(set(names)) != len(names):
        raise InputError(str(summary), f"lists classes {[(c.value, c.name) for c in classes]}; distinct values "
                                       "from 1 to 255 with distinct names expected")
    return classes


def evaluate(pred: str, labels: str | None = None, data: str | None = None,
             split: str | None = None) -> dict[str, Any]:
    pred_root = Path(pred)
    if not pred_root.is_dir():
        raise InputError(pred, "prediction folder not found")
    predictions = _files_by_name(_prediction_folder(pred_root))
    if data:
        if not split:
            raise ConfigError("--data needs --split SPLIT (the cases to evaluate)")
        dataset = read_dataset(data)
        references = {c: dataset.label(c) for c in dataset.split(split)}
        missing = sorted(c for c, path in references.items() if path is None)
        if missing:
            raise InputError(str(dataset.root / "labels"), f"no label file for cases {', '.join(missing[:5])}")
        names = dataset.label_names
    elif labels:
        if not Path(labels).is_dir():
            raise InputError(labels, "reference label folder not found")
        references = _files_by_name(Path(labels))
        names = None
    else:
        raise ConfigError("give the references: --labels DIR, or --data DIR --split SPLIT")
    predictions = {k: v for k, v in predictions.items() if k in references} if data else predictions
    return evaluate_folder(predictions, references, _classes(pred_root, names))


def check_report_path(out: Path) -> None:
    """The report may only replace an earlier report: never an image, a label map or a dataset.json."""
    if out.suffix.lower() != ".json":
        raise ConfigError(f"--json {out}: the report is a .json file; give a name ending in .json")
    if out.is_dir():
        raise InputError(str(out), "is a folder; --json needs a file name")
    if not out.parent.is_dir():  # found out now, not after the work
        raise InputError(str(out.parent), "folder not found; --json FILE must lie in an existing folder")
    if out.exists():
        try:
            earlier = json.loads(out.read_text())
        except (OSError, ValueError):
            earlier = None
        if not (isinstance(earlier, dict) and {"n_cases", "cases", "mean"} <= set(earlier)):
            raise InputError(str(out), "exists and is not a report of plcl evaluate; it is left as it is: choose "
                                       "another --json file")


def run_evaluation(args: argparse.Namespace, sink: EventSink) -> dict[str, Any]:
    out = Path(args.json) if args.json else Path(args.pred) / METRICS_FILE
    check_report_path(out)
    report = evaluate(args.pred, args.labels, args.data, args.split)
    table = format_table(report)
    if getattr(args, "events", None) == "jsonl":
        print(table, file=sys.stderr)
    else:
        print(table)
    for message in report.get("warnings", []):
        sink.emit("warning", message=message)
    with atomic_path(out) as tmp, open(tmp, "w") as f:
        json.dump(report, f, indent=2)
    sink.emit("output", kind="metrics", path=str(out), name=None)
    return report
