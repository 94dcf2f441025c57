"""``plcl cohort slurm``: an sbatch array script whose N tasks are the N shards of a cohort.

Each task runs ``plcl predict --shard auto --skip-existing``, so the script can be submitted again
at any time (after a failure, a ``scancel``, a node lost): only the inputs still missing are done.
``--signal=B:USR1@SECONDS`` asks Slurm to signal the batch shell before the time limit; the script
sends plcl SIGTERM, plcl finishes the input under way, and the task requeues itself
(``--requeue``) to carry on (Slurm starts a requeued job after a short delay). Pre-emption and
``scancel`` send SIGTERM to plcl directly: it finishes the input under way; a pre-empted task is
requeued by Slurm, a cancelled one is not.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

from ... import __version__
from ..errors import ConfigError, InputError
from ..protocol import DEFAULT_ESTIMATE, EXIT_CANCELLED, LOGS_FOLDER, SBATCH_FILE

#: Seconds before the time limit at which Slurm signals a task: enough to finish one cine subject on a CPU.
SIGNAL_SECONDS = 120


def package_root() -> Path:
    """The folder the engine's package is imported from (on the nodes' PYTHONPATH)."""
    return Path(__file__).resolve().parents[3]


def sbatch_script(model: str, inputs: str, out: str, tasks: int, device: str, gpus_per_task: int = 0,
                  cpus_per_task: int | None = None, time_limit: str | None = None, partition: str | None = None,
                  python: str | None = None, estimate: str = DEFAULT_ESTIMATE) -> str:
    """The array script (bash). Paths are absolute: the script runs from any folder on any node."""
    if tasks < 1:
        raise ConfigError(f"--tasks {tasks}: at least 1")
    if gpus_per_task < 0 or (cpus_per_task is not None and cpus_per_task < 1):
        raise ConfigError("--gpus-per-task must be 0 or more and --cpus-per-task 1 or more")
    q = shlex.quote
    out_path = Path(out).resolve()
    options = [f"--job-name=plcl-{out_path.name}"[:60], f"--array=0-{tasks - 1}",
               f"--output={out_path / LOGS_FOLDER / '%A_%a.log'}", "--open-mode=append", "--requeue",
               f"--signal=B:USR1@{SIGNAL_SECONDS}"]
    if cpus_per_task:
        options.append(f"--cpus-per-task={cpus_per_task}")
    if gpus_per_task:
        options.append(f"--gpus-per-task={gpus_per_task}")
    if time_limit:
        options.append(f"--time={time_limit}")
    if partition:
        options.append(f"--partition={partition}")
    command = [python or sys.executable, "-m", "PLCLSegmentationLib.engine", "predict",
               "--model", os.path.abspath(model), "--inputs", os.path.abspath(inputs),
               "--out", str(out_path), "--shard", "auto", "--skip-existing", "--device", device]
    if estimate != DEFAULT_ESTIMATE:
        command += ["--estimate", estimate]
    lines = [
        "#!/bin/bash",
        f"# Written by plcl cohort slurm (plcl {__version__}): the inputs of the list, segmented into",
        f"# {out_path} by {tasks} array tasks, task I doing shard I of {tasks}. Inputs already done are",
        "# skipped: submit it again (sbatch this file) to do what is missing. Progress: plcl cohort status.",
        *[f"#SBATCH {o}" for o in options],
        "",
        f"export PLCL_SHARD_COUNT={tasks}  # the shard count, also when a part of the array is resubmitted",
        f"export PYTHONPATH={q(str(package_root()))}${{PYTHONPATH:+:$PYTHONPATH}}",
        "export OMP_NUM_THREADS=${SLURM_CPUS_PER_TASK:-${OMP_NUM_THREADS:-}}",
        '[ -n "$OMP_NUM_THREADS" ] || unset OMP_NUM_THREADS',
        "",
        "# Slurm's --signal (USR1, before the time limit) reaches this shell: plcl finishes the input under",
        "# way and stops, then the task goes back to the queue and carries on where it stopped.",
        "stopped=0",
        'trap \'stopped=1; kill -TERM "$plcl" 2>/dev/null\' USR1',
        " ".join(q(c) for c in command) + " &",
        "plcl=$!",
        'wait "$plcl"; code=$?',
        'if [ "$stopped" = 1 ]; then',
        '    wait "$plcl"; code=$?  # the trap ended the first wait early',
        f'    if [ "$code" = {EXIT_CANCELLED} ]; then',
        '        scontrol requeue "${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}"',
        "    fi",
        "fi",
        'exit "$code"',
    ]
    return "\n".join(lines) + "\n"


def write_script(out: Path, script: str) -> Path:
    from ..files.volumes import atomic_path

    (out / LOGS_FOLDER).mkdir(parents=True, exist_ok=True)
    path = out / SBATCH_FILE
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        f.write(script)
    os.chmod(path, 0o755)
    return path


def submit(script: Path) -> str:
    """Submit through sbatch; the job id."""
    try:
        result = subprocess.run(["sbatch", "--parsable", str(script)], capture_output=True, text=True, timeout=120)
    except FileNotFoundError:
        raise InputError(str(script), "was written but not submitted: sbatch was not found (is this a Slurm login "
                                      "node?); submit it with sbatch where Slurm is") from None
    if result.returncode:
        reason = (result.stderr.strip().splitlines() or [f"exit code {result.returncode}"])[-1]
        raise InputError(str(script), f"was written but sbatch refused it: {reason}")
    return result.stdout.strip().split(";")[0]
