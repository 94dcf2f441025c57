"""The cohort-scale benchmark (issue 30) on SYNTHETIC volumes and a running Slurm cluster.

``python -m PLCLSegmentationLib.engine.lab.cohort_scale --out DIR [--volumes 1000] [--tasks 4]
[--stages list,plain,memory,sharded,resumed] [--estimate full|fast|off]``

Slurm's commands (sbatch, squeue, scancel) must reach a cluster (``SLURM_CONF``); on one machine,
``python Testing/slurm_support.py DIR`` starts a one-node cluster and prints its ``SLURM_CONF``.
In order, into ``DIR``:

1. ``cohort/``: ``--volumes`` SYNTHETIC volumes (``--distinct`` phantoms of lab/synthetic.py, copied
   under as many subject names) and one corrupt file (half of a volume) in the middle of
   ``list.txt``; ``model/``: a small model trained briefly on two other phantoms (or ``--model``).
2. A 100,000-line list (of empty files) read, checked for unique names and sharded (shard 3 of 8,
   with each of its files looked up) in this process, as a task of ``plcl predict --inputs`` does.
3. The plain single-process loop: ``plcl predict --model M --out plain IMAGE ...`` (every volume but
   the corrupt one on its command line): wall time, peak memory.
4. One task as an array task runs it (``plcl predict --inputs LIST --shard 0/1 --skip-existing``)
   on the first 100 volumes and on all of them: peak memory (wait4's maximum resident set).
5. The sharded path: ``plcl cohort slurm --tasks N --cpus-per-task C --submit`` on the whole list,
   timed from the command to the array's end; every volume recorded once, the corrupt one in
   failures with its reason; ``plcl cohort status`` and ``collect`` (table and QC page).
6. Resumption: the same into a new folder; once task ``--kill-task`` has done half its share it is
   cancelled (``scancel``), the array ends, the script is submitted again: every volume recorded
   once (none done twice), the new records are exactly the missing ones, and the failures name
   the corrupt file only.

``--stages`` runs some of 2-6 (1 always; Slurm is needed for sharded and resumed only); ``--estimate``
is given to every ``plcl predict`` (the quality estimate's mirrored passes). Writes
``DIR/cohort_scale.json`` and ``DIR/cohort_scale.md``; exits 1 when a check fails. The throughput and
memory figures are measurements, reported against the issue's targets, not checks.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

from ..files.input_list import check_entry, read_inputs, unique_inputs
from ..files.volumes import atomic_path
from ..protocol import DEFAULT_ESTIMATE, ESTIMATES, FAILURES_SUFFIX, RESULTS_SUFFIX, SHARDS_FOLDER
from ..run.cohort_folder import read_records
from ..run.shard import Shard
from ..run.summary import write_json
from .child import engine_command, engine_environment, run_child
from .cohort_scale_report import STAGES, report_markdown
from .machine import cpu_name
from .synthetic import make_synthetic_dataset

#: The issue's targets: sharded throughput against the plain loop, memory of 1,000 against 100 volumes, list time.
THROUGHPUT_TARGET, MEMORY_TARGET, LIST_SECONDS_TARGET = 0.95, 0.10, 2.0
CORRUPT = "subject_corrupt.nii.gz"
TRAIN = ["--iterations", "30", "--budget", "quick", "--set", "patch_size=32", "--set", "levels=3", "--device", "cpu"]


# --- 1. the cohort and the model ----------------------------------------------------------------------------


def make_cohort(folder: Path, volumes: int, distinct: int) -> tuple[Path, list[str]]:
    """SYNTHETIC volumes subject_00000.nii.gz ... and list.txt (the corrupt file at its middle); the names."""
    phantoms = make_synthetic_dataset(folder / "phantoms", n_cases=distinct + 2, seed=30)
    sources = sorted((phantoms / "images").glob("*.nii.gz"))[2:]  # the first two train the model
    names = []
    for index in range(volumes):
        name = f"subject_{index:05d}.nii.gz"
        shutil.copyfile(sources[index % len(sources)], folder / name)
        names.append(name)
    data = sources[0].read_bytes()
    (folder / CORRUPT).write_bytes(data[: len(data) // 2])
    listed = names[: volumes // 2] + [CORRUPT] + names[volumes // 2:]
    write_list(folder / "list.txt", listed)
    return folder / "list.txt", names


def write_list(path: Path, names: list[str]) -> None:
    with atomic_path(path) as tmp, open(tmp, "w") as f:
        f.write("# SYNTHETIC cohort of the cohort-scale benchmark\n" + "".join(f"{n}\n" for n in names))


def train_model(folder: Path, out: Path) -> str:
    phantoms = folder / "phantoms"
    first, second = sorted((phantoms / "images").glob("*.nii.gz"))[:2]
    run_child(["train", "--labeled", str(first), str(phantoms / "labels" / first.name), "--unlabeled", str(second),
               "--out", str(out), *TRAIN], out.parent / "train.log")
    return str(out / "model.pt")


# --- 2. a 100,000-line list -----------------------------------------------------------------------------------


#: The shard whose inputs the list timing looks up.
LIST_SHARD = Shard(3, 8)


def list_timing(folder: Path, lines: int = 100_000, shard: Shard = LIST_SHARD) -> dict[str, Any]:
    """Read, check and shard a list of ``lines`` empty files as run_cohort_prediction does, timed: the one
    pass over the list (names checked, the shard's entries kept), then that and the shard's files looked up."""
    folder.mkdir(parents=True, exist_ok=True)
    names = [f"subject_{i:06d}.nii.gz" for i in range(lines)]
    for name in names:
        (folder / name).touch()
    listing = folder / "list.txt"
    write_list(listing, names)
    started = time.perf_counter()
    count, mine = unique_inputs(read_inputs([], str(listing)), str(listing), lambda entry: shard.holds(entry.position))
    read = time.perf_counter() - started
    for entry in mine:
        check_entry(entry)
    total = time.perf_counter() - started
    return {"lines": count, "shard": str(shard), "shard_inputs": len(mine), "read_and_check_names_s": round(read, 3),
            "read_check_and_shard_s": round(total, 3), "listing": str(listing)}


# --- 3, 4. the plain loop and one task --------------------------------------------------------------------------


def plain_loop(model: str, folder: Path, names: list[str], out: Path, estimate: str) -> dict[str, Any]:
    measured = run_child(["predict", "--model", model, "--out", str(out), "--device", "cpu", "--estimate", estimate,
                          *[str(folder / n) for n in names]], out.parent / f"{out.name}.log")
    return {**_rounded(measured), "volumes": len(names), "volumes_per_s": round(len(names) / measured["seconds"], 3)}


def one_task(model: str, listing: Path, out: Path, volumes: int, estimate: str) -> dict[str, Any]:
    measured = run_child(["predict", "--model", model, "--inputs", str(listing), "--out", str(out), "--shard", "0/1",
                          "--skip-existing", "--device", "cpu", "--estimate", estimate], out.parent / f"{out.name}.log")
    return {**_rounded(measured), "volumes": volumes, "volumes_per_s": round(volumes / measured["seconds"], 3)}


def _rounded(measured: dict[str, Any]) -> dict[str, Any]:
    return {key: round(value, 2) for key, value in measured.items()}


# --- 5, 6. Slurm ------------------------------------------------------------------------------------------------


class Slurm:
    """The cluster's commands, through the environment's SLURM_CONF."""

    def __init__(self) -> None:
        missing = [c for c in ("sbatch", "squeue", "scancel") if shutil.which(c) is None]
        if missing:
            raise SystemExit(f"cohort_scale: Slurm's {', '.join(missing)} not found: run it where Slurm is "
                             "(on one machine: python Testing/slurm_support.py DIR starts a cluster)")

    def tasks(self, job: str) -> list[tuple[str, str]]:
        out = subprocess.run(["squeue", "-h", "-r", "-j", job, "-o", "%i %T"], capture_output=True, text=True,
                             timeout=60).stdout
        return [(line.split()[0], line.split()[1]) for line in out.splitlines() if len(line.split()) >= 2]

    def wait(self, job: str, timeout: float = 7200) -> None:
        deadline = time.monotonic() + timeout
        while self.tasks(job):
            if time.monotonic() > deadline:
                raise SystemExit(f"cohort_scale: job {job} still running after {timeout:.0f} s")
            time.sleep(0.5)

    def cancel(self, task: str) -> None:
        subprocess.run(["scancel", task], check=True, timeout=60)


def submit(model: str, listing: Path, out: Path, tasks: int, cpus: int, estimate: str) -> str:
    result = subprocess.run(engine_command("cohort", "slurm", "--model", model, "--inputs", str(listing), "--out",
                                           str(out), "--tasks", str(tasks), "--cpus-per-task", str(cpus),
                                           "--estimate", estimate, "--submit"),
                            capture_output=True, text=True, env=engine_environment(), timeout=600)
    if result.returncode or "submitted job " not in result.stdout:
        raise SystemExit(f"cohort_scale: plcl cohort slurm failed ({result.returncode}): {result.stderr.strip()}")
    return result.stdout.split("submitted job ")[1].split(";")[0].strip()


def shard_records(out: Path, suffix: str = RESULTS_SUFFIX) -> dict[str, list[dict[str, Any]]]:
    """Each shard file's whole records, by shard name."""
    return {path.name[: -len(suffix)]: list(read_records(path))
            for path in sorted((out / SHARDS_FOLDER).glob(f"shard-*{suffix}"))}


def recorded_names(out: Path, suffix: str = RESULTS_SUFFIX) -> list[str]:
    return [r["name"] for records in shard_records(out, suffix).values() for r in records]


def cohort_checks(out: Path, names: list[str]) -> dict[str, Any]:
    """Every volume recorded once with all its files; the failures name the corrupt file only, with a reason."""
    done = recorded_names(out)
    wanted = {Path(n).name.split(".")[0] for n in names}
    failures = [r for records in shard_records(out, FAILURES_SUFFIX).values() for r in records]
    missing_files = [f for records in shard_records(out).values() for r in records for f in r["files"]
                     if not (out / f).is_file()]
    return {"recorded": len(done), "distinct": len(set(done)), "all_segmented": set(done) == wanted,
            "none_twice": len(done) == len(set(done)), "files_missing": len(missing_files),
            "failures": sorted({r["name"] for r in failures}),
            "failure_reasons": sorted({r["reason"] for r in failures}),
            "only_the_corrupt_failed": {r["name"] for r in failures} == {Path(CORRUPT).name.split(".")[0]}
            and all(r["reason"] for r in failures)}


def sharded_run(slurm: Slurm, model: str, listing: Path, names: list[str], out: Path, tasks: int,
                cpus: int, estimate: str) -> dict[str, Any]:
    started = time.monotonic()
    job = submit(model, listing, out, tasks, cpus, estimate)
    slurm.wait(job)
    seconds = time.monotonic() - started
    checks = cohort_checks(out, names)
    status = subprocess.run(engine_command("cohort", "status", str(out)), capture_output=True, text=True,
                            env=engine_environment(), timeout=600)
    collected = run_child(["cohort", "collect", str(out)], out.parent / f"{out.name}.collect.log")
    seconds_per_volume = [r["seconds"] for records in shard_records(out).values() for r in records]
    return {"job": job, "tasks": tasks, "cpus_per_task": cpus, "seconds": round(seconds, 2),
            "volumes_per_s": round(len(names) / seconds, 3), "checks": checks, "status": status.stdout,
            "collect_seconds": round(collected["seconds"], 2),
            "mean_seconds_per_volume_in_tasks": round(sum(seconds_per_volume) / max(1, len(seconds_per_volume)), 3)}


def resumed_run(slurm: Slurm, model: str, listing: Path, names: list[str], out: Path, tasks: int, cpus: int,
                kill_task: int, estimate: str) -> dict[str, Any]:
    job = submit(model, listing, out, tasks, cpus, estimate)
    shard = Shard(kill_task, tasks)
    share = sum(1 for entry in read_inputs([], str(listing)) if shard.holds(entry.position))
    results = out / SHARDS_FOLDER / f"{shard.name}{RESULTS_SUFFIX}"
    while len(list(read_records(results))) < share // 2:
        if not slurm.tasks(job):
            raise SystemExit(f"cohort_scale: the array ended before task {kill_task} had done half its share")
        time.sleep(0.2)
    slurm.cancel(f"{job}_{kill_task}")
    slurm.wait(job)
    before = shard_records(out)
    done_before = {name: len(records) for name, records in before.items()}
    started = time.monotonic()
    again = submit(model, listing, out, tasks, cpus, estimate)
    slurm.wait(again)
    after = shard_records(out)
    redone = {name: len(after.get(name, [])) - done_before.get(name, 0) for name in after}
    missing = len(names) - sum(done_before.values())
    checks = cohort_checks(out, names)
    checks["only_the_missing_redone"] = sum(redone.values()) == missing and checks["none_twice"]
    return {"job": job, "resubmitted_job": again, "killed_task": kill_task, "share_of_killed_task": share,
            "done_before_resubmission": done_before, "missing_before_resubmission": missing,
            "done_by_resubmission": redone, "resubmission_seconds": round(time.monotonic() - started, 2),
            "checks": checks}


# --- the whole benchmark ----------------------------------------------------------------------------------------


def run(out: Path, volumes: int, distinct: int, tasks: int, cpus: int, kill_task: int, model: str | None,
        memory_small: int, stages: tuple[str, ...] = STAGES, estimate: str = DEFAULT_ESTIMATE) -> dict[str, Any]:
    slurm = Slurm() if {"sharded", "resumed"} & set(stages) else None
    out.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {"machine": {"cpu": cpu_name(),
                                          "cores": os.cpu_count(), "python": platform.python_version()},
                              "volumes": volumes, "distinct_phantoms": distinct, "stages": list(stages),
                              "estimate": estimate}
    cohort = out / "cohort"
    cohort.mkdir(exist_ok=True)
    listing, names = make_cohort(cohort, volumes, distinct)
    model_path = model or train_model(cohort, out / "model")
    report["model"] = model_path
    if "list" in stages:
        report["list"] = list_timing(out / "list100k")
        shutil.rmtree(out / "list100k")
        _save(out, report)
    if "plain" in stages:
        report["plain"] = plain_loop(model_path, cohort, names, out / "plain", estimate)
        _save(out, report)
    if "memory" in stages:
        small = cohort / "first.txt"
        write_list(small, names[:memory_small])
        clean = cohort / "clean.txt"
        write_list(clean, names)
        report["task_small"] = one_task(model_path, small, out / "task_small", memory_small, estimate)
        report["task_large"] = one_task(model_path, clean, out / "task_large", volumes, estimate)
        _save(out, report)
    if slurm and "sharded" in stages:
        report["sharded"] = sharded_run(slurm, model_path, listing, names, out / "sharded", tasks, cpus, estimate)
        _save(out, report)
    if slurm and "resumed" in stages:
        report["resumed"] = resumed_run(slurm, model_path, listing, names, out / "resumed", tasks, cpus, kill_task,
                                        estimate)
    report["targets"] = targets(report)
    return report


def _save(out: Path, report: dict[str, Any]) -> None:
    """What is measured so far (cohort_scale.json), in case the run is stopped before its end."""
    write_json(out / "cohort_scale.json", report)


def targets(report: dict[str, Any]) -> dict[str, Any]:
    """The issue's targets and the checks, of the stages that ran."""
    found: dict[str, Any] = {}
    if "plain" in report and "sharded" in report:
        ratio = report["sharded"]["volumes_per_s"] / report["plain"]["volumes_per_s"]
        found.update(throughput_ratio=round(ratio, 3), throughput_met=ratio >= THROUGHPUT_TARGET)
    if "task_large" in report:
        growth = report["task_large"]["peak_rss_mb"] / report["task_small"]["peak_rss_mb"] - 1
        found.update(memory_growth=round(growth, 4), memory_met=abs(growth) <= MEMORY_TARGET)
    if "list" in report:
        found["list_met"] = report["list"]["read_check_and_shard_s"] < LIST_SECONDS_TARGET
    checks = [(report[run]["checks"], keys) for run, keys in (
        ("sharded", ("all_segmented", "none_twice", "only_the_corrupt_failed")),
        ("resumed", ("all_segmented", "none_twice", "only_the_corrupt_failed", "only_the_missing_redone")))
        if run in report]
    found["checks_passed"] = all(all(c[k] for k in keys) and not c["files_missing"] for c, keys in checks)
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m PLCLSegmentationLib.engine.lab.cohort_scale",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, metavar="DIR", help="a new folder for the cohort, runs and report")
    parser.add_argument("--volumes", type=int, default=1000)
    parser.add_argument("--distinct", type=int, default=50, help="distinct SYNTHETIC phantoms among the volumes")
    parser.add_argument("--tasks", type=int, default=4, help="array tasks")
    parser.add_argument("--cpus-per-task", type=int, default=1)
    parser.add_argument("--kill-task", type=int, default=1, help="the task cancelled half-way in the resumption run")
    parser.add_argument("--memory-small", type=int, default=100, help="volumes of the small one-task run")
    parser.add_argument("--model", help="a model file to use instead of training a small one")
    parser.add_argument("--stages", default=",".join(STAGES), metavar="S,T",
                        help=f"the stages to run, of {', '.join(STAGES)} (default all)")
    parser.add_argument("--estimate", default=DEFAULT_ESTIMATE, choices=list(ESTIMATES),
                        help="plcl predict --estimate of every prediction")
    args = parser.parse_args(argv)
    out = Path(args.out)
    if out.exists() and any(out.iterdir()):
        parser.error(f"--out {out}: not empty; give a new folder")
    if not (0 <= args.kill_task < args.tasks and 0 < args.memory_small < args.volumes):
        parser.error("--kill-task must be 0 to --tasks - 1, --memory-small 1 to --volumes - 1")
    stages = tuple(s for s in STAGES if s in args.stages.split(","))
    unknown = set(args.stages.split(",")) - set(STAGES)
    if unknown or not stages:
        parser.error(f"--stages: of {', '.join(STAGES)}, not {', '.join(sorted(unknown)) or 'none'}")
    report = run(out, args.volumes, args.distinct, args.tasks, args.cpus_per_task, args.kill_task, args.model,
                 args.memory_small, stages, args.estimate)
    _save(out, report)
    with atomic_path(out / "cohort_scale.md") as tmp, open(tmp, "w") as f:
        f.write(report_markdown(report))
    print(report_markdown(report))
    return 0 if report["targets"]["checks_passed"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
