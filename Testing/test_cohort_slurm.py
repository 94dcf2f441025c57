"""``plcl cohort slurm --submit`` on a real one-node Slurm (slurm_support.py) with a SYNTHETIC cohort:
the array segments every volume and lists the corrupt one in failures; a task stopped by a signal
requeues itself, a cancelled task's volumes are done by a resubmission, and nothing complete is
done twice. Skipped, with the reason, only where Slurm cannot run (not Linux, not installed, not root);
a Slurm that is there and does not start fails with its daemons' logs."""

from __future__ import annotations

import csv
import json
import time
from collections import Counter
from pathlib import Path

import pytest
from conftest import REPO, run_plcl
from slurm_support import SlurmUnavailable, start_cluster
from test_cohort_predict import make_cohort, model, records  # noqa: F401 - model is a fixture

pytestmark = pytest.mark.slurm


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    try:
        started = start_cluster(tmp_path_factory.mktemp("slurm"))
    except SlurmUnavailable as reason:
        pytest.skip(f"Slurm cannot start here: {reason}")
    yield started
    started.stop()


def submit(cluster, model_path: str, listing: Path, out: Path, tasks: int, *options: str) -> str:
    result = run_plcl("cohort", "slurm", "--model", model_path, "--inputs", str(listing), "--out", str(out),
                      "--tasks", str(tasks), "--cpus-per-task", "1", "--submit", *options, env=cluster.env)
    assert result.returncode == 0, result.stderr
    return result.stdout.split("submitted job ")[1].split(";")[0]


def wait_for_records(out: Path, shard: str, count: int, timeout: float = 120) -> None:
    path = out / "shards" / f"{shard}.results.jsonl"
    deadline = time.monotonic() + timeout
    while not (path.is_file() and len(path.read_text().splitlines()) >= count):
        assert time.monotonic() < deadline, f"{path}: fewer than {count} records after {timeout} s"
        time.sleep(0.1)


def test_an_array_segments_the_cohort_and_lists_the_corrupt_file(cluster, synthetic, model, tmp_path):  # noqa: F811
    listing = make_cohort(synthetic, tmp_path / "cohort", 8, corrupt="corrupt.nii.gz")
    out = tmp_path / "out"
    job = submit(cluster, model, listing, out, 2, "--estimate", "off")  # a CPU cohort's one-pass prediction
    script = (out / "cohort.sbatch").read_text()
    assert "#SBATCH --array=0-1" in script and "#SBATCH --requeue" in script and "--signal=B:USR1@" in script
    assert "--shard auto --skip-existing" in script and "--estimate off" in script
    cluster.wait(job)
    done = Counter(r["name"] for r in records(out))
    assert sorted(done) == [f"subject_{i:03d}" for i in range(8)] and set(done.values()) == {1}
    assert all(value is None for r in records(out) for value in r["dice_est"].values())
    [failure] = records(out, "failures")
    assert failure["name"] == "corrupt" and failure["reason"]
    status = run_plcl("cohort", "status", str(out))
    assert status.returncode == 0, status.stderr
    assert [line.split()[:5] for line in status.stdout.splitlines() if line.split()[0] == "all"] == [
        ["all", "9", "8", "1", "0"]]
    assert f"failed: {tmp_path / 'cohort' / 'corrupt.nii.gz'}" in status.stdout
    logs = sorted((out / "logs").glob(f"{job}_*.log"))
    assert len(logs) == 2, logs
    collected = run_plcl("cohort", "collect", str(out))
    assert collected.returncode == 0, collected.stderr
    with open(out / "cohort.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["name"] for r in rows] == [f"subject_{i:03d}" for i in range(8)]
    assert all(float(r["label 2_ml"]) > 0 and r["size"].count("x") == 2 for r in rows)


def test_a_signalled_task_requeues_and_a_cancelled_one_is_finished_by_resubmitting(cluster, synthetic, model,  # noqa: F811
                                                                                     tmp_path):
    count = 40
    listing = make_cohort(synthetic, tmp_path / "cohort", count)
    out = tmp_path / "out"
    job = submit(cluster, model, listing, out, 2, "--estimate", "off")  # requeueing does not depend on it
    wait_for_records(out, "shard-0000-of-0002", 2)
    # Slurm's --signal (as before a time limit) reaches the batch shell: plcl stops after the volume under way
    # and the task requeues itself.
    cluster.run("scancel", "--signal=USR1", "--batch", f"{job}_0")
    cluster.run("scancel", f"{job}_1")  # cancelled outright (plcl gets SIGTERM, then SIGKILL): not requeued
    deadline = time.monotonic() + 60
    while (f"{job}_0", "PENDING") not in cluster.jobs(job):
        assert time.monotonic() < deadline, f"task 0 was not requeued: {cluster.jobs(job)}\n{cluster.logs()}"
        time.sleep(0.2)
    # Slurm holds a requeued job for 120 s before it may start again: the test lets it start in 5 s (slurmd
    # refuses to start a job id again at once after it was killed for the requeue).
    cluster.run("scontrol", "update", f"JobId={job}_0", "StartTime=now+5")
    cluster.wait(job)
    shard0 = [r["name"] for r in records(out) if r["shard"] == "0/2"]
    shard1 = [r["name"] for r in records(out) if r["shard"] == "1/2"]
    assert len(shard0) == count // 2 == len(set(shard0)), "the requeued task did not finish its shard once"
    assert len(shard1) < count // 2, "task 1 finished before it was cancelled: a bigger cohort is needed"
    log0 = "".join(p.read_text() for p in (out / "logs").glob(f"{job}_0.log"))
    assert "stopping after the current step" in log0 and "complete already (--skip-existing)" in log0
    # Submitted again: task 0 has nothing left, task 1 does only the volumes it had not done.
    again = submit(cluster, model, listing, out, 2, "--estimate", "off")
    cluster.wait(again)
    done = Counter(r["name"] for r in records(out))
    assert sorted(done) == [f"subject_{i:03d}" for i in range(count)]
    assert set(done.values()) == {1}, f"done twice: {[n for n, c in done.items() if c > 1]}"
    status = run_plcl("cohort", "status", str(out))
    assert "   0  finished" in status.stdout and status.stdout.count("finished") == 2, status.stdout
    assert json.loads((out / "cohort.json").read_text())["shards"] == 2
    assert str(REPO / "PLCLSegmentation") in (out / "cohort.sbatch").read_text()
