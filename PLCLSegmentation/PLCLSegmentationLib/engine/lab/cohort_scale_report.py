"""The cohort-scale benchmark's report (lab/cohort_scale.py) as Markdown tables."""

from __future__ import annotations

from typing import Any

#: The benchmark's stages, in order (lab/cohort_scale.py ``--stages``).
STAGES = ("list", "plain", "memory", "sharded", "resumed")


def _yes(value: bool) -> str:
    return "yes" if value else "**no**"


def report_markdown(report: dict[str, Any]) -> str:
    """The tables of what ``report`` holds (every stage, or those of ``--stages``)."""
    targets, machine = report["targets"], report["machine"]
    lines = [
        f"# Cohort scale: {report['volumes']} SYNTHETIC volumes and one corrupt file",
        "",
        f"Machine: {machine['cpu']}, {machine['cores']} cores, Python {machine['python']}; stages: "
        f"{', '.join(report.get('stages', STAGES))}; --estimate {report.get('estimate', 'full')}.",
        "",
        "| measurement | value | target | met |",
        "|---|---|---|---|",
    ]
    if "plain" in report:
        plain = report["plain"]
        lines.append(f"| plain loop (`plcl predict IMAGE ...`, one process) | {plain['seconds']} s, "
                     f"{plain['volumes_per_s']} volumes/s | | |")
    if "sharded" in report:
        sharded = report["sharded"]
        lines.append(f"| sharded (`plcl cohort slurm --tasks {sharded['tasks']} --cpus-per-task "
                     f"{sharded['cpus_per_task']} --submit`, to the array's end) | {sharded['seconds']} s, "
                     f"{sharded['volumes_per_s']} volumes/s | | |")
    if "throughput_ratio" in targets:
        lines.append(f"| sharded / plain throughput | {targets['throughput_ratio']} | >= 0.95 | "
                     f"{_yes(targets['throughput_met'])} |")
    if "memory_growth" in targets:
        small, large = report["task_small"], report["task_large"]
        lines += [f"| one task's peak memory, {small['volumes']} volumes | {small['peak_rss_mb']} MB | | |",
                  f"| one task's peak memory, {large['volumes']} volumes | {large['peak_rss_mb']} MB | | |",
                  f"| growth from {small['volumes']} to {large['volumes']} volumes | "
                  f"{targets['memory_growth'] * 100:+.1f} % | within 10 % | {_yes(targets['memory_met'])} |"]
    if "list" in report:
        listing = report["list"]
        lines += [f"| {listing['lines']:,}-line list read, names checked, shard {listing['shard']} taken | "
                  f"{listing['read_and_check_names_s']} s | | |",
                  f"| ... and its {listing['shard_inputs']:,} files looked up | "
                  f"{listing['read_check_and_shard_s']} s | < 2 s | {_yes(targets['list_met'])} |"]
    if "sharded" in report and "resumed" in report:
        lines += _checks(report["sharded"], report["resumed"])
    return "\n".join(lines + [""])


def _checks(sharded: dict[str, Any], resumed: dict[str, Any]) -> list[str]:
    lines = ["", "| check | sharded run | resumed run |", "|---|---|---|"]
    first, second = sharded["checks"], resumed["checks"]
    for key, what in (("all_segmented", "every volume segmented"), ("none_twice", "no volume recorded twice"),
                      ("only_the_corrupt_failed", "the failures: the corrupt file only, with its reason")):
        lines.append(f"| {what} | {_yes(first[key])} | {_yes(second[key])} |")
    lines.append(f"| files of a record missing | {first['files_missing']} | {second['files_missing']} |")
    lines.append(f"| only the missing volumes redone after the resubmission | | "
                 f"{_yes(second['only_the_missing_redone'])} |")
    lines += [
        "",
        f"Failure reasons: {'; '.join(first['failure_reasons'])}.",
        "",
        f"Resumption: task {resumed['killed_task']} cancelled after half of its {resumed['share_of_killed_task']} "
        f"inputs; {resumed['missing_before_resubmission']} volumes were missing; the resubmission did "
        + ", ".join(f"{name}: {count}" for name, count in resumed["done_by_resubmission"].items())
        + f" in {resumed['resubmission_seconds']} s.",
        "",
        "```",
        sharded["status"].rstrip(),
        "```",
    ]
    return lines
