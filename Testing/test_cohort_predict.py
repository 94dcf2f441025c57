"""``plcl predict --inputs LIST --shard I/N --skip-existing``: a cohort shard on SYNTHETIC volumes.

Lists (text, CSV, folder) and shards are checked without torch; the end-to-end runs use a tiny
model trained through the command line."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO, case_of, run_plcl

from PLCLSegmentationLib.engine.errors import ConfigError, InputError
from PLCLSegmentationLib.engine.files.input_list import check_unique_names, read_inputs
from PLCLSegmentationLib.engine.protocol import EXIT_CANCELLED, EXIT_DONE_WITH_FAILURES, EXIT_OK
from PLCLSegmentationLib.engine.run.cohort_folder import append_record, read_records
from PLCLSegmentationLib.engine.run.shard import Shard, parse_shard

TINY = ["--iterations", "2", "--budget", "quick", "--set", "patch_size=32", "--set", "levels=3", "--device", "cpu"]


def test_a_text_list_skips_comments_and_blank_lines_and_reads_relative_paths_from_its_folder(tmp_path):
    (tmp_path / "list.txt").write_text("# a cohort\n\na.nii.gz\n  sub/b.nrrd  \n/abs/c.nii\n")
    entries = list(read_inputs(["first.nii.gz"], str(tmp_path / "list.txt")))
    assert [e.position for e in entries] == [0, 1, 2, 3]
    assert [e.path for e in entries[1:]] == [str(tmp_path / "a.nii.gz"), str(tmp_path / "sub" / "b.nrrd"),
                                             "/abs/c.nii"]
    assert entries[1].origin == f"{tmp_path / 'list.txt'}:3" and entries[0].origin == "argument"


def test_a_csv_list_takes_its_path_column_and_a_folder_its_images(tmp_path):
    (tmp_path / "list.csv").write_text("subject,Path\ns1,x/a.nii.gz\ns2,\"x/b, c.nii.gz\"\n")
    assert [e.path for e in read_inputs([], str(tmp_path / "list.csv"))] == [
        str(tmp_path / "x" / "a.nii.gz"), str(tmp_path / "x" / "b, c.nii.gz")]
    for name in ("b.nii.gz", "a.nrrd", "a.seg.nrrd", ".hidden.nii", "notes.txt"):
        (tmp_path / name).write_text("")
    assert [Path(e.path).name for e in read_inputs([], str(tmp_path))] == ["a.nrrd", "b.nii.gz"]
    (tmp_path / "bad.csv").write_text("subject,file\ns1,a.nii.gz\n")
    with pytest.raises(InputError, match="no 'path' column"):
        list(read_inputs([], str(tmp_path / "bad.csv")))
    with pytest.raises(InputError, match="does not exist"):
        list(read_inputs([], str(tmp_path / "missing.txt")))


def test_names_must_differ_across_the_whole_list(tmp_path):
    (tmp_path / "list.txt").write_text("a/case1.nii.gz\nb/case2.nii.gz\nc/case1.nrrd\n")
    with pytest.raises(InputError, match=r"list.txt:3\) has the same name 'case1'.*list.txt:1"):
        check_unique_names(read_inputs([], str(tmp_path / "list.txt")), str(tmp_path / "list.txt"))
    (tmp_path / "empty.txt").write_text("# nothing\n")
    with pytest.raises(InputError, match="lists no images"):
        check_unique_names(read_inputs([], str(tmp_path / "empty.txt")), str(tmp_path / "empty.txt"))


def test_a_100000_line_list_is_read_checked_for_names_and_sharded(tmp_path):
    lines = "".join(f"images/subject_{i:06d}.nii.gz\n" for i in range(100_000))
    (tmp_path / "list.txt").write_text(lines)
    assert check_unique_names(read_inputs([], str(tmp_path / "list.txt")), None) == 100_000
    shard = Shard(3, 8)
    mine = [e for e in read_inputs([], str(tmp_path / "list.txt")) if shard.holds(e.position)]
    assert len(mine) == 12_500 and mine[0].name == "subject_000003" and mine[1].name == "subject_000011"


@pytest.mark.parametrize("text, env, expected", [
    (None, {}, Shard(0, 1)),
    ("2/5", {}, Shard(2, 5)),
    ("auto", {"SLURM_ARRAY_TASK_ID": "3", "SLURM_ARRAY_TASK_COUNT": "4"}, Shard(3, 4)),
    ("auto", {"SLURM_ARRAY_TASK_ID": "4", "SLURM_ARRAY_TASK_COUNT": "4", "SLURM_ARRAY_TASK_MIN": "1"}, Shard(3, 4)),
    # a part of the array resubmitted (--array=5): the count of the script, not of the part
    ("auto", {"SLURM_ARRAY_TASK_ID": "5", "SLURM_ARRAY_TASK_COUNT": "1", "SLURM_ARRAY_TASK_MIN": "5",
              "PLCL_SHARD_COUNT": "8"}, Shard(5, 8)),
    ("auto", {"JOB_COMPLETION_INDEX": "7", "PLCL_SHARD_COUNT": "10"}, Shard(7, 10)),
])
def test_shards_from_the_option_or_the_scheduler(text, env, expected):
    assert parse_shard(text, env) == expected


@pytest.mark.parametrize("text, env, message", [
    ("3/3", {}, "I must be 0 to N-1"),
    ("1/0", {}, "I must be 0 to N-1"),
    ("a/b", {}, "expected I/N"),
    ("2", {}, "expected I/N"),
    ("auto", {}, "needs a task index"),
    ("auto", {"JOB_COMPLETION_INDEX": "1"}, "needs a task index"),
    ("auto", {"SLURM_ARRAY_TASK_ID": "x", "SLURM_ARRAY_TASK_COUNT": "2"}, "whole numbers"),
])
def test_bad_shards_are_usage_errors(text, env, message):
    with pytest.raises(ConfigError, match=message):
        parse_shard(text, env)


def test_a_torn_last_record_is_skipped_and_the_next_starts_on_its_own_line(tmp_path):
    path = tmp_path / "r.jsonl"
    append_record(path, {"name": "a"})
    with open(path, "a") as f:
        f.write('{"name": "b", "fi')  # a kill during the write
    append_record(path, {"name": "c"})
    assert [r["name"] for r in read_records(path)] == ["a", "c"]


def _resident_mb() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the C heap's free pages are trimmed on Linux only")
def test_the_free_pages_of_an_input_go_back_to_the_system():
    """A shard calls release_freed_memory after each input: memory freed inside the heap (below a block
    still in use, as a long run leaves it) leaves the process, so the next input does not add to it."""
    import numpy as np

    from PLCLSegmentationLib.engine.run.memory import release_freed_memory

    blocks = [np.ones(12_000) for _ in range(2_000)]  # 96 KB each: on the heap, not mapped on their own
    kept = np.ones(12_000)  # above them: the heap cannot just shrink from its top
    del blocks
    before = _resident_mb()
    if not release_freed_memory():
        pytest.skip("no malloc_trim in this C library")
    assert before - _resident_mb() > 100, "the 190 MB freed stayed in the process"
    assert kept.sum() == 12_000


# --- end to end ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def model(synthetic, tmp_path_factory) -> str:
    out = tmp_path_factory.mktemp("cohort_model") / "run"
    image, label = case_of(synthetic, "synthetic_001")
    result = run_plcl("train", "--labeled", image, label, "--unlabeled", case_of(synthetic, "synthetic_002")[0],
                      "--out", str(out), *TINY)
    assert result.returncode == 0, result.stderr
    return str(out / "model.pt")


def make_cohort(synthetic: Path, folder: Path, count: int, corrupt: str | None = None) -> Path:
    """``count`` SYNTHETIC volumes (copies of the six phantoms under new names) and a list of them."""
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for i in range(count):
        shutil.copy(case_of(synthetic, f"synthetic_{i % 6 + 1:03d}")[0], folder / f"subject_{i:03d}.nii.gz")
        names.append(f"subject_{i:03d}.nii.gz")
    if corrupt:
        (folder / corrupt).write_bytes(b"\x1f\x8b not a volume")
        names.insert(count // 2, corrupt)
    (folder / "list.txt").write_text("# test cohort\n" + "\n".join(names) + "\n")
    return folder / "list.txt"


def records(out: Path, kind: str = "results") -> list[dict]:
    return [r for p in sorted((out / "shards").glob(f"*.{kind}.jsonl")) for r in read_records(p)]


def test_shards_split_the_cohort_record_failures_and_skip_what_is_done(synthetic, model, tmp_path):
    listing = make_cohort(synthetic, tmp_path / "cohort", 5, corrupt="torn.nii.gz")
    out = tmp_path / "out"
    first = run_plcl("predict", "--model", model, "--inputs", str(listing), "--out", str(out), "--shard", "0/2",
                     "--device", "cpu")
    # positions 0, 2, 4 of subject_000, subject_001, torn, subject_002, subject_003: the torn one goes on
    assert first.returncode == EXIT_DONE_WITH_FAILURES, first.stderr
    assert sorted(r["name"] for r in records(out)) == ["subject_000", "subject_003"]
    [failure] = records(out, "failures")
    assert failure["name"] == "torn" and failure["listed_at"].endswith("list.txt:4") and "damaged" in failure["reason"]
    assert "torn.nii.gz" in first.stderr and "going on" in first.stderr
    second = run_plcl("predict", "--model", model, "--inputs", str(listing), "--out", str(out), "--shard", "1/2",
                      "--device", "cpu")
    assert second.returncode == EXIT_OK, second.stderr
    done = {r["name"]: r for r in records(out)}
    assert sorted(done) == [f"subject_{i:03d}" for i in range(5)]
    for record in done.values():
        assert all((out / f).is_file() for f in record["files"]) and record["kind"] == "volume"
        assert set(record["ml"]) == {"label 1", "label 2", "label 3"} and 0 <= record["uncertainty_score"] <= 1
    cohort = json.loads((out / "cohort.json").read_text())
    assert cohort["shards"] == 2 and cohort["inputs"] == str(listing) and len(cohort["model_sha256"]) == 64

    # A volume whose segmentation is gone is redone; the complete ones are not; the failure is tried again.
    (out / "predictions" / "subject_003.seg.nrrd").unlink()
    again = run_plcl("predict", "--model", model, "--inputs", str(listing), "--out", str(out), "--shard", "0/2",
                     "--skip-existing", "--device", "cpu", "--events", "jsonl")
    assert again.returncode == EXIT_DONE_WITH_FAILURES, again.stderr
    written = [json.loads(line) for line in again.stdout.splitlines()]
    assert [e["backend"] for e in written if e["event"] == "start"] == ["torch"]  # as docs/protocol.md says
    assert sorted(e["name"] for e in written if e["event"] == "output" and e["kind"] == "prediction") == [
        "subject_003"]
    assert (out / "predictions" / "subject_003.seg.nrrd").is_file() and len(records(out, "failures")) == 2


def test_sigterm_finishes_the_volume_under_way_and_a_rerun_resumes(synthetic, model, tmp_path):
    count = 16
    listing = make_cohort(synthetic, tmp_path / "cohort", count)
    out = tmp_path / "out"
    environment = {**os.environ, "PYTHONPATH": str(REPO / "PLCLSegmentation")}
    process = subprocess.Popen([sys.executable, "-m", "PLCLSegmentationLib.engine", "predict", "--model", model,
                                "--inputs", str(listing), "--out", str(out), "--skip-existing", "--device", "cpu",
                                "--estimate", "off"],  # stopping and resuming do not depend on it
                               env=environment, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not records(out):  # as a scheduler does: SIGTERM once the shard is under way
        assert time.monotonic() < deadline and process.poll() is None, process.stderr.read()
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    stderr = process.communicate(timeout=120)[1]
    assert process.returncode == EXIT_CANCELLED, stderr
    stopped = [r["name"] for r in records(out)]
    assert 1 <= len(stopped) < count, "the shard ended before the signal: a bigger cohort is needed"
    assert all((out / f).is_file() for r in records(out) for f in r["files"])  # the last volume finished
    resumed = run_plcl("predict", "--model", model, "--inputs", str(listing), "--out", str(out), "--skip-existing",
                       "--device", "cpu", "--estimate", "off")
    assert resumed.returncode == EXIT_OK, resumed.stderr
    names = [r["name"] for r in records(out)]
    assert sorted(names) == [f"subject_{i:03d}" for i in range(count)] and len(names) == count


def test_a_cohort_folder_of_another_model_or_shard_count_is_refused(synthetic, model, tmp_path):
    listing = make_cohort(synthetic, tmp_path / "cohort", 2)
    out = tmp_path / "out"
    ok = run_plcl("predict", "--model", model, "--inputs", str(listing), "--out", str(out), "--device", "cpu")
    assert ok.returncode == EXIT_OK, ok.stderr
    before = sorted(p.name for p in out.rglob("*"))
    refused = run_plcl("predict", "--model", model, "--inputs", str(listing), "--out", str(out), "--shard", "0/3",
                       "--device", "cpu")
    assert refused.returncode == 1 and "another shard count" in refused.stderr
    assert sorted(p.name for p in out.rglob("*")) == before
    cohort = json.loads((out / "cohort.json").read_text())
    (out / "cohort.json").write_text(json.dumps({**cohort, "model": "/elsewhere/model.pt", "model_sha256": "0" * 64}))
    refused = run_plcl("predict", "--model", model, "--inputs", str(listing), "--out", str(out), "--device", "cpu")
    assert refused.returncode == 1 and "holds a cohort of another model (/elsewhere/model.pt" in refused.stderr


def test_the_cohort_folder_is_documented_as_the_code_defines_it():
    from test_docs import PROTOCOL_DOC, first_table, one_name

    from PLCLSegmentationLib.engine import protocol

    rows = first_table(PROTOCOL_DOC.read_text(encoding="utf-8"), "The cohort folder")
    documented = {one_name(row[0], "The cohort folder") for row in rows}
    in_code = {protocol.COHORT_FILE, f"{protocol.SHARDS_FOLDER}/", protocol.SBATCH_FILE, f"{protocol.LOGS_FOLDER}/",
               protocol.COHORT_TABLE, protocol.COHORT_PARQUET, protocol.COHORT_QC}
    assert documented == in_code
