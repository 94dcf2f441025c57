"""``plcl cohort collect DIR``: one table of a cohort's results, one row per input done.

Columns: name, input, kind, frames, size, spacing_mm, uncertainty_score; per class of the model
``dice_est_CLASS`` (its estimated Dice, the lowest over a sequence's frames), ``CLASS_ml`` (a volume)
and ``CLASS_ed_ml``, ``CLASS_es_ml``, ``CLASS_ef_percent`` (a sequence: the class's largest and
smallest volume over the frames, end-diastole and end-systole for a ventricle, and the ejection
fraction); ``review`` says why a case is worth a look first (a value far from the cohort's: more
than 3.5 robust standard deviations from the median, and below it for an estimated Dice; among the
1 % least certain). Records are streamed twice (which record of each input is the last complete
one, then the rows), so memory holds names and a few numbers per input, never the records.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any

import numpy as np

from ..files.volumes import atomic_path
from ..protocol import COHORT_PARQUET, COHORT_TABLE, RESULTS_SUFFIX
from ..run.cohort_folder import all_records, is_complete
from .status import read_description

#: Robust z-score beyond which a value is far from the cohort's (median and MAD).
OUTLIER_Z = 3.5


def columns(classes: list[str]) -> list[str]:
    per_class = [f"{c}_{suffix}" for c in classes for suffix in ("ml", "ed_ml", "es_ml", "ef_percent")]
    estimated = [f"dice_est_{c}" for c in classes]
    return ["name", "input", "kind", "frames", "size", "spacing_mm", "uncertainty_score", *estimated, *per_class,
            "review"]


def row_of(record: dict[str, Any], classes: list[str]) -> dict[str, Any]:
    row: dict[str, Any] = {"name": record["name"], "input": record["input"], "kind": record["kind"],
                           "frames": record.get("frames", 1), "size": "x".join(str(s) for s in record["size"]),
                           "spacing_mm": "x".join(f"{s:g}" for s in record["spacing_mm"]),
                           "uncertainty_score": record["uncertainty_score"]}
    for c in classes:  # records of engines before the estimates have none
        row[f"dice_est_{c}"] = (record.get("dice_est") or {}).get(c)
        if record["kind"] == "sequence":
            summary = record["volume_summary"].get(c) or {}
            row[f"{c}_ed_ml"], row[f"{c}_es_ml"] = summary.get("max_ml"), summary.get("min_ml")
            ef = summary.get("ejection_fraction")
            row[f"{c}_ef_percent"] = None if ef is None else round(ef, 2)
        else:
            row[f"{c}_ml"] = record["ml"].get(c)
    return row


def _numbers(row: dict[str, Any], names: list[str]) -> list[float]:
    return [float("nan") if row.get(n) is None else float(row[n]) for n in names]


def collect(out: Path) -> dict[str, Any]:
    """Write OUT/cohort.csv (and .parquet where pyarrow is); returns what the QC page needs."""
    cohort = read_description(out)
    classes = [c["name"] for c in cohort["classes"]]
    header = columns(classes)
    numeric = [h for h in header
               if h.endswith(("_ml", "_percent")) or h == "uncertainty_score" or h.startswith("dice_est_")]
    # Pass 1: the last complete record of each input, and its numbers.
    last: dict[str, int] = {}
    values: dict[str, list[float]] = {}
    for index, record in enumerate(all_records(out, RESULTS_SUFFIX)):
        if is_complete(out, record):
            last[record["name"]] = index
            values[record["name"]] = _numbers(row_of(record, classes), numeric)
    names = sorted(values)
    table = np.array([values[n] for n in names], dtype=float).reshape(len(names), len(numeric))
    flags = _review_flags(names, table, numeric)
    # Pass 2: the rows, in name order of the chosen records.
    rows: dict[str, dict[str, Any]] = {}
    for index, record in enumerate(all_records(out, RESULTS_SUFFIX)):
        if last.get(record["name"]) == index:
            rows[record["name"]] = {**row_of(record, classes), "review": "; ".join(flags.get(record["name"], []))}
    with atomic_path(out / COHORT_TABLE) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=header)
        writer.writeheader()
        for name in names:
            writer.writerow(rows.pop(name))
    parquet = _write_parquet(out)
    return {"rows": len(names), "names": names, "classes": classes, "numeric": numeric, "table": table,
            "flags": flags, "csv": out / COHORT_TABLE, "parquet": parquet}


def _review_flags(names: list[str], table: np.ndarray, numeric: list[str]) -> dict[str, list[str]]:
    flags: dict[str, list[str]] = {}
    for column, name in enumerate(numeric):
        data = table[:, column]
        present = data[~np.isnan(data)]
        if name == "uncertainty_score" and len(present):
            cut = np.quantile(present, 0.99)
            for i in np.flatnonzero(data >= cut):
                flags.setdefault(names[i], []).append(f"least certain ({data[i]:.3f})")
        if len(present) < 5:
            continue
        median = float(np.median(present))
        spread = 1.4826 * float(np.median(np.abs(present - median)))
        if spread <= 0 or not math.isfinite(spread):
            continue
        z = (data - median) / spread
        far = np.abs(np.nan_to_num(z)) > OUTLIER_Z
        if name.startswith("dice_est_"):  # an estimate above the cohort's is no reason to look
            far &= np.nan_to_num(z) < 0
        for i in np.flatnonzero(far):
            flags.setdefault(names[i], []).append(f"{name} {'high' if z[i] > 0 else 'low'} ({data[i]:.4g})")
    return flags


def _write_parquet(out: Path) -> Path | None:
    try:
        import pyarrow.csv
        import pyarrow.parquet
    except ImportError:
        return None
    table = pyarrow.csv.read_csv(str(out / COHORT_TABLE))
    with atomic_path(out / COHORT_PARQUET) as tmp:
        pyarrow.parquet.write_table(table, tmp)
    return out / COHORT_PARQUET
