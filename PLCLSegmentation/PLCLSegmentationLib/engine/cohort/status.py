"""``plcl cohort status DIR``: per shard, how many inputs are done, failed, pending, and whether it runs now."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import InputError
from ..files.input_list import read_inputs
from ..protocol import COHORT_FILE, FAILURES_SUFFIX
from ..run.cohort_folder import all_records, completed_names, read_cohort, shard_is_running
from ..run.shard import Shard


@dataclass
class ShardStatus:
    shard: Shard
    inputs: int = 0
    done: int = 0
    failed: int = 0
    running: bool = False

    @property
    def pending(self) -> int:
        return self.inputs - self.done - self.failed


def read_description(out: Path) -> dict:
    cohort = read_cohort(out)
    if cohort is None:
        raise InputError(str(out), f"is not a cohort folder (no {COHORT_FILE}): give the --out folder of plcl "
                                   "cohort slurm or of plcl predict --inputs")
    return cohort


def cohort_status(out: Path) -> tuple[list[ShardStatus], dict[str, str]]:
    """Each shard's counts, and the failed inputs (path -> one-line reason; not done since)."""
    cohort = read_description(out)
    count = int(cohort["shards"])
    shards = [ShardStatus(Shard(i, count), running=shard_is_running(out, Shard(i, count))) for i in range(count)]
    where: dict[str, int] = {}
    for entry in read_inputs(cohort.get("images") or [], cohort.get("inputs")):
        where[entry.name] = entry.position % count
        shards[entry.position % count].inputs += 1
    done = completed_names(out, set(where))
    failures = {r["name"]: r for r in all_records(out, FAILURES_SUFFIX) if r["name"] in where and
                r["name"] not in done}
    for name in done:
        shards[where[name]].done += 1
    for name in failures:
        shards[where[name]].failed += 1
    return shards, {r["input"]: r.get("reason", "") for r in failures.values()}


def format_status(shards: list[ShardStatus], failures: dict[str, str], shown: int = 20) -> str:
    lines = [f"{'shard':>12} {'inputs':>8} {'done':>8} {'failed':>8} {'pending':>8}  state"]
    for s in shards:
        state = "running" if s.running else ("finished" if not s.pending else "waiting")
        lines.append(f"{str(s.shard):>12} {s.inputs:>8} {s.done:>8} {s.failed:>8} {s.pending:>8}  {state}")
    total = [sum(getattr(s, key) for s in shards) for key in ("inputs", "done", "failed", "pending")]
    lines.append(f"{'all':>12} {total[0]:>8} {total[1]:>8} {total[2]:>8} {total[3]:>8}")
    for path, reason in list(failures.items())[:shown]:
        lines.append(f"failed: {path}: {reason}")
    if len(failures) > shown:
        lines.append(f"... and {len(failures) - shown} more failures (shards/*.failures.jsonl)")
    return "\n".join(lines)
