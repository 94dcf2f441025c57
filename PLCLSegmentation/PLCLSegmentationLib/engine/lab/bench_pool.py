"""One benchmark table from several ``plcl bench`` folders of the same protocol.

Seeds and variants can run in separate processes (one at a time on a small machine, or on several
machines); ``python -m PLCLSegmentationLib.engine.lab.bench_pool OUT FOLDER [FOLDER ...]`` pools their
runs into ``OUT/results.json`` and ``OUT/results.md``, with the per-method table and the ablation
table (each variant against the method, seed by seed) over all of them. Folders must share the
dataset, evaluation split, budget and preset, and a seed must have drawn the same cases in each; a
method run twice on one seed is refused rather than counted twice.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

#: Protocol fields that must agree for runs to be compared in one table.
_SHARED = ("eval_split", "budget_minutes", "budget_iterations", "preset", "name", "n_labeled_patients",
           "n_unlabeled", "labeled_slices", "as_whole_volumes")


class PoolError(ValueError):
    """Folders that cannot be pooled; the message names the file and the problem."""


def _read(folder: Path) -> dict[str, Any]:
    path = folder / "results.json"
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise PoolError(f"{path}: not found (not a plcl bench folder)") from None
    except (OSError, ValueError) as error:
        raise PoolError(f"{path}: cannot be read ({error})") from None


def pool_results(folders: list[Path]) -> dict[str, Any]:
    """The runs of every folder as one results dictionary (the form ``plcl bench`` writes)."""
    from .bench import aggregate

    if not folders:
        raise PoolError("no bench folders given")
    first = _read(folders[0])
    protocol = {key: first["protocol"].get(key) for key in _SHARED}
    cases: dict[str, Any] = {}
    specs: dict[str, dict[str, Any]] = {}
    runs: list[dict[str, Any]] = []
    seen: dict[tuple[str, int], Path] = {}
    machines: list[str] = []
    for folder in folders:
        results = first if folder == folders[0] else _read(folder)
        path = folder / "results.json"
        if results["dataset"] != first["dataset"]:
            raise PoolError(f"{path}: dataset {results['dataset']!r}, not {first['dataset']!r} as in {folders[0]}")
        for key in _SHARED:
            if results["protocol"].get(key) != protocol[key]:
                raise PoolError(f"{path}: protocol {key} {results['protocol'].get(key)!r}, not {protocol[key]!r} "
                                f"as in {folders[0]}")
        for seed, chosen in results["protocol"]["cases"].items():
            if cases.setdefault(seed, chosen) != chosen:
                raise PoolError(f"{path}: seed {seed} drew other cases than in an earlier folder")
        for name, method in results["methods"].items():
            spec = {"label": method["label"], "variant_of": method.get("variant_of")}
            if specs.setdefault(name, spec) != spec:
                raise PoolError(f"{path}: method {name} is {method['label']!r}, elsewhere {specs[name]['label']!r}")
        for run in results["runs"]:
            key = (run["method"], int(run["seed"]))
            if key in seen:
                raise PoolError(f"{path}: {run['method']} seed {run['seed']} also ran in {seen[key]}")
            seen[key] = folder
            runs.append(run)
        if results["machine"] not in machines:
            machines.append(results["machine"])
    seeds = sorted({int(seed) for _, seed in seen})
    pooled = dict(first)
    pooled.update(machine="; ".join(machines), command=None, pooled_from=[str(f) for f in folders],
                  methods=aggregate(runs, specs), runs=runs, throughput=None, propagation=None,
                  protocol={**first["protocol"], "seeds": seeds, "cases": {str(s): cases[str(s)] for s in seeds}})
    return pooled


def write_pool(out: Path, folders: list[Path]) -> list[Path]:
    from .bench import save_results
    from .bench_report import dice_time_figure

    results = pool_results(folders)
    out.mkdir(parents=True, exist_ok=True)
    save_results(out, results)
    written = [out / "results.json", out / "results.md"]
    if any(run.get("curve") for run in results["runs"]):
        written += [path for path in [dice_time_figure(results, out / "dice_vs_time.png")] if path]
    return written


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print("usage: python -m PLCLSegmentationLib.engine.lab.bench_pool OUT FOLDER [FOLDER ...]", file=sys.stderr)
        return 2
    out, folders = Path(argv[0]), [Path(a) for a in argv[1:]]
    if any(out.resolve() == f.resolve() for f in folders):
        print(f"error: {out}: is one of the folders to pool; choose another output folder", file=sys.stderr)
        return 2
    try:
        for written in write_pool(out, folders):
            print(written)
    except PoolError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
