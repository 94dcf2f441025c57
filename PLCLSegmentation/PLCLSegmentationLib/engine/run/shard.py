"""Which inputs one task of an array does: ``--shard I/N`` or ``--shard auto``.

Input number p (0-based, in list order) belongs to shard p mod N: shards get equal shares, and a
list sorted by site or date spreads over all of them. ``auto`` reads the task's index from the
scheduler (Slurm's array task id, Kubernetes Indexed Jobs' completion index) and the count from
PLCL_SHARD_COUNT (the script of ``plcl cohort slurm`` sets it, so a resubmitted part of the array
keeps the shards it had) or Slurm's array size.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from ..errors import ConfigError
from ..protocol import SHARD_COUNT_VARIABLES, SHARD_INDEX_VARIABLES, shard_name


@dataclass(frozen=True)
class Shard:
    index: int
    count: int

    def holds(self, position: int) -> bool:
        return position % self.count == self.index

    @property
    def name(self) -> str:
        return shard_name(self.index, self.count)

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


WHOLE = Shard(0, 1)


def parse_shard(text: str | None, environment: Mapping[str, str] | None = None) -> Shard:
    """``I/N`` (0 <= I < N), ``auto``, or None (all inputs); a usage error otherwise."""
    if text is None:
        return WHOLE
    if text == "auto":
        return _from_environment(os.environ if environment is None else environment)
    index, _, count = text.partition("/")
    try:
        shard = Shard(int(index), int(count))
    except ValueError:
        raise ConfigError(f"--shard {text}: expected I/N (e.g. 0/8, the first of 8 shards) or auto") from None
    if not (shard.count >= 1 and 0 <= shard.index < shard.count):
        raise ConfigError(f"--shard {text}: I must be 0 to N-1 and N at least 1")
    return shard


def _from_environment(environment: Mapping[str, str]) -> Shard:
    index_name = next((n for n in SHARD_INDEX_VARIABLES if environment.get(n, "").strip()), None)
    count_name = next((n for n in SHARD_COUNT_VARIABLES if environment.get(n, "").strip()), None)
    if index_name is None or count_name is None:
        raise ConfigError(f"--shard auto: needs a task index ({' or '.join(SHARD_INDEX_VARIABLES)}) and a count "
                          f"({' or '.join(SHARD_COUNT_VARIABLES)}) in the environment; give --shard I/N instead")
    try:
        index, count = int(environment[index_name]), int(environment[count_name])
        if count_name == "SLURM_ARRAY_TASK_COUNT":  # an array 1-N: its tasks are shards 0 to N-1
            index -= int(environment.get("SLURM_ARRAY_TASK_MIN", "0") or 0)
    except ValueError:
        raise ConfigError(f"--shard auto: {index_name}={environment[index_name]!r} and "
                          f"{count_name}={environment[count_name]!r} must be whole numbers") from None
    if not (count >= 1 and 0 <= index < count):
        raise ConfigError(f"--shard auto: task {index} of {count} ({index_name}, {count_name}): the index must be "
                          "0 to count-1")
    return Shard(index, count)
