"""The cohort-scale benchmark's targets and report of the stages that ran (lab/cohort_scale.py --stages)."""

from __future__ import annotations

from PLCLSegmentationLib.engine.lab.cohort_scale import targets
from PLCLSegmentationLib.engine.lab.cohort_scale_report import report_markdown


def _report(**stages) -> dict:
    return {"machine": {"cpu": "a CPU", "cores": 2, "python": "3.9"}, "volumes": 1000, "stages": list(stages),
            "estimate": "full", **stages}


def test_a_memory_and_list_rerun_reports_those_targets_only():
    report = _report(task_small={"volumes": 100, "peak_rss_mb": 900.0, "seconds": 70.0},
                     task_large={"volumes": 1000, "peak_rss_mb": 999.0, "seconds": 700.0},
                     list={"lines": 100000, "shard": "3/8", "shard_inputs": 12500, "read_and_check_names_s": 0.7,
                           "read_check_and_shard_s": 1.1})
    report["targets"] = found = targets(report)
    assert found == {"memory_growth": 0.11, "memory_met": False, "list_met": True, "checks_passed": True}
    text = report_markdown(report)
    assert "growth from 100 to 1000 volumes | +11.0 % | within 10 % | **no** |" in text
    assert "< 2 s | yes |" in text and "plain loop" not in text and "resumed run" not in text


def test_a_failed_check_of_the_sharded_run_fails_the_benchmark():
    checks = {"all_segmented": True, "none_twice": False, "only_the_corrupt_failed": True, "files_missing": 0}
    assert targets(_report(sharded={"checks": checks, "volumes_per_s": 2.0}))["checks_passed"] is False
    checks["none_twice"] = True
    assert targets(_report(sharded={"checks": checks, "volumes_per_s": 2.0}))["checks_passed"] is True
