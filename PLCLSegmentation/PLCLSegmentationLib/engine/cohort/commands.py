"""The ``plcl cohort`` command: its options and what each sub-command does."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..events import EventSink
from ..protocol import COHORT_QC, DEFAULT_ESTIMATE, ESTIMATES, EXIT_OK, device_argument


def add_cohort_arguments(parser: argparse.ArgumentParser) -> None:
    commands = parser.add_subparsers(dest="cohort_command", required=True)
    slurm = commands.add_parser("slurm", help="write (and submit) a Slurm array script that segments a cohort")
    slurm.add_argument("--model", required=True, metavar="MODEL")
    slurm.add_argument("--inputs", required=True, metavar="LIST",
                       help="a text file of paths, a CSV file with a 'path' column, or a folder")
    slurm.add_argument("--out", required=True, metavar="DIR", help="the cohort folder")
    slurm.add_argument("--tasks", required=True, type=int, metavar="N", help="array tasks (shards)")
    slurm.add_argument("--gpus-per-task", type=int, default=0, metavar="G", help="GPUs per task (default 0)")
    slurm.add_argument("--cpus-per-task", type=int, default=None, metavar="C")
    slurm.add_argument("--time", default=None, metavar="LIMIT", help="each task's time limit (sbatch --time)")
    slurm.add_argument("--partition", default=None, metavar="NAME")
    slurm.add_argument("--device", default=None, type=device_argument, metavar="DEVICE",
                       help="the tasks' device (default: cuda with --gpus-per-task, else cpu)")
    slurm.add_argument("--estimate", default=DEFAULT_ESTIMATE, choices=list(ESTIMATES),
                       help=f"the tasks' estimated Dice per structure (plcl predict --estimate; default "
                       f"{DEFAULT_ESTIMATE}; fast or off for a CPU cohort: see docs/cost-model.md)")
    slurm.add_argument("--submit", action="store_true", help="submit the script with sbatch")
    status = commands.add_parser("status", help="done, failed and pending inputs per shard")
    status.add_argument("out", metavar="DIR")
    collect = commands.add_parser("collect", help="one table (CSV; Parquet with pyarrow) and a QC page (PNG)")
    collect.add_argument("out", metavar="DIR")


def run_cohort(args: argparse.Namespace, sink: EventSink) -> int:
    out = Path(args.out)
    if args.cohort_command == "slurm":
        return _slurm(args, out)
    if args.cohort_command == "status":
        from .status import cohort_status, format_status

        print(format_status(*cohort_status(out)), flush=True)
        return EXIT_OK
    from .collect import collect
    from .qc_plot import qc_page

    collected = collect(out)
    print(f"wrote {collected['csv']} ({collected['rows']} inputs)", flush=True)
    if collected["parquet"]:
        print(f"wrote {collected['parquet']}", flush=True)
    page = qc_page(collected, out / COHORT_QC, out.resolve().name)
    if page:
        print(f"wrote {page}", flush=True)
    return EXIT_OK


def _slurm(args: argparse.Namespace, out: Path) -> int:
    from ..files.input_list import check_entry, read_inputs, unique_inputs
    from ..files.volumes import check_writable_folder
    from ..method.modelfile import read_model
    from ..run.cohort_folder import claim_cohort_folder, cohort_description
    from .slurm import sbatch_script, submit, write_script

    device = args.device or ("cuda" if args.gpus_per_task else "cpu")
    script = sbatch_script(args.model, args.inputs, str(out), args.tasks, device, args.gpus_per_task,
                           args.cpus_per_task, args.time, args.partition, estimate=args.estimate)
    info, _ = read_model(args.model)  # a damaged model: refused before anything is written
    count, entries = unique_inputs(read_inputs([], args.inputs), args.inputs, lambda entry: True)
    for entry in entries:  # once here, so no task finds a missing file hours later
        check_entry(entry)
    check_writable_folder(out)
    claim_cohort_folder(out, cohort_description(args.model, [c.to_dict() for c in info.classes], args.inputs, [],
                                                args.tasks))
    path = write_script(out, script)
    print(f"wrote {path}: {count} inputs in {args.tasks} array tasks", flush=True)
    if args.submit:
        job = submit(path)
        print(f"submitted job {job}; progress: plcl cohort status {out}", flush=True)
    else:
        print(f"submit it with: sbatch {path}", flush=True)
    return EXIT_OK
