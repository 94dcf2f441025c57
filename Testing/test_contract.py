"""The module-engine contract has one owner (engine/protocol.py, request.py): schedule, outputs, stopping."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import REPO

from PLCLSegmentationLib.engine import cli, request
from PLCLSegmentationLib.engine.protocol import EVENT_KEYS, OUTPUT_KINDS, STOP_FILE, SUMMARY_FILE

FAKE_ENGINE = REPO / "Testing" / "fake_engine.py"


def config(*args: str):
    parsed = cli.build_parser().parse_args(["train", "--labeled", "a", "b", "--out", "o", *args])
    return request.train_config(request.TrainOptions.from_namespace(parsed))


def test_the_engine_alone_decides_the_warm_start_schedule():
    """The module passes the same budget (and iterations) as for a first run, plus --init-model."""
    for budget in ("quick", "standard"):
        scratch, warm = config("--budget", budget), config("--budget", budget, "--init-model", "m.pt")
        assert warm.warm_start_labels == "reviewed" and warm.rounds == 1  # the round labelled by the model given
        assert warm.warmup_iterations == 1
        assert warm.total_iterations == scratch.warmup_iterations // 4 + scratch.joint_iterations
        assert warm.learning_rate == pytest.approx(scratch.learning_rate / 3)
        assert warm.total_iterations < scratch.total_iterations / 2
        scratch, warm = config("--budget", budget, "--iterations", "40"), \
            config("--budget", budget, "--iterations", "40", "--init-model", "m.pt")
        assert scratch.total_iterations == 40 and warm.total_iterations < 20


def test_a_warm_start_labels_its_round_with_the_model_it_starts_from_unless_told_otherwise():
    """warm_start_labels=reviewed (default): one warm-up step, the rest of the warm-up joins the round (same total
    as "warmed", a quarter of the warm-up before the round)."""
    for args in ((), ("--iterations", "600")):
        warmed = config(*args, "--init-model", "m.pt", "--set", "warm_start_labels=warmed")
        reviewed = config(*args, "--init-model", "m.pt")
        assert warmed.warmup_iterations > 1 and reviewed.warmup_iterations == 1 and reviewed.rounds == 1
        assert warmed.warm_start_labels == "warmed" and reviewed.warm_start_labels == "reviewed"
        assert reviewed.total_iterations == warmed.total_iterations
        assert reviewed.learning_rate == warmed.learning_rate
    # A first training has no model to label with: its schedule is the same either way.
    assert config("--set", "warm_start_labels=warmed").warmup_iterations == config().warmup_iterations


def test_the_fake_engine_speaks_the_real_command_line(tmp_path):
    """It is built on the engine's parser: what the engine refuses, it refuses (exit 2)."""
    for bad in (["train", "--budget", "huge", "--out", str(tmp_path)], ["predict", "--out", str(tmp_path)],
                ["train", "--device", "tpu", "--out", str(tmp_path)]):
        fake = subprocess.run([sys.executable, str(FAKE_ENGINE), *bad], capture_output=True, text=True, timeout=60)
        real = subprocess.run([sys.executable, "-c", "import sys; from PLCLSegmentationLib.engine import cli; "
                               "sys.exit(cli.main(sys.argv[1:]))", *bad], capture_output=True, text=True, timeout=60,
                              cwd=REPO / "PLCLSegmentation")
        assert fake.returncode == real.returncode == 2, (bad, fake.stderr, real.stderr)



def _keys(entries: list[dict]) -> set[str]:
    return set().union(*(e.keys() for e in entries)) if entries else set()


def test_the_fake_engine_writes_what_the_real_engine_writes(synthetic, tmp_path):
    """The module's tests run on the fake engine: every event, event key, loss name and summary key it
    gives, the real engine gives too, for the same command line."""
    pytest.importorskip("torch")
    from conftest import case_of, events, run_plcl

    args = ["train", "--labeled", *case_of(synthetic, "synthetic_001"), "--unlabeled",
            case_of(synthetic, "synthetic_002")[0], "--iterations", "2", "--budget", "quick", "--set", "patch_size=32",
            "--set", "levels=3", "--device", "cpu", "--events", "jsonl"]
    real = run_plcl(*args, "--out", str(tmp_path / "real"))
    fake = subprocess.run([sys.executable, str(FAKE_ENGINE), *args, "--out", str(tmp_path / "fake")],
                          capture_output=True, text=True, timeout=120)
    assert real.returncode == fake.returncode == 0, (real.stderr, fake.stderr)
    real_events, fake_events = events(real.stdout), events(fake.stdout)
    for name in {e["event"] for e in fake_events}:
        assert name in EVENT_KEYS, name
        mine = _keys([e for e in fake_events if e["event"] == name])
        assert mine <= _keys([e for e in real_events if e["event"] == name]), name
        assert mine <= {"event", "time", *EVENT_KEYS[name], "precision"}, name
    losses = [set(e["losses"]) for e in fake_events if e["event"] == "progress"]
    assert losses and set().union(*losses) <= set().union(*(e["losses"] for e in real_events
                                                            if e["event"] == "progress"))
    real_summary, fake_summary = (json.loads((tmp_path / side / SUMMARY_FILE).read_text()) for side in ("real", "fake"))
    assert set(fake_summary) <= set(real_summary)
    assert set(fake_summary["outputs"]) == set(real_summary["outputs"])
    real_volumes, fake_volumes = real_summary["volumes"], fake_summary["volumes"]
    assert [v["name"] for v in fake_volumes] == [v["name"] for v in real_volumes] == ["synthetic_002"]
    assert set(fake_volumes[0]) <= set(real_volumes[0])
    for part in ("structures", "slices"):  # the review contract (docs/protocol.md)
        assert _keys(fake_volumes[0][part]) <= _keys(real_volumes[0][part]), part

def test_the_contract_names():
    assert STOP_FILE == "stop.request" and SUMMARY_FILE == "summary.json"
    assert set(OUTPUT_KINDS) == {"model", "checkpoint", "training", "job"}


def test_predict_stops_on_the_stop_file_written_after_it_started(tmp_path, synthetic):
    """plcl predict is stopped by a stop file written once it runs (no signal involved); one left over from an
    earlier run is not this run's request: it is ignored."""
    pytest.importorskip("torch")
    import os
    import shutil
    import subprocess
    import sys

    from conftest import REPO, case_of, run_plcl

    train = tmp_path / "train"
    result = run_plcl("train", "--data", str(synthetic), "--labeled-cases", "synthetic_001", "--out", str(train),
                      "--iterations", "2", "--budget", "quick", "--set", "patch_size=64", "--device", "cpu",
                      "--events", "jsonl")
    assert result.returncode == 0, result.stderr
    summary = json.loads((train / SUMMARY_FILE).read_text())
    assert summary["outputs"]["model"] == str(train / "model.pt")
    assert summary["outputs"]["checkpoint"] == str(train / "checkpoint.pt")
    images = []
    for index in range(12):  # enough volumes that the request arrives while they are segmented
        images.append(str(tmp_path / f"v{index:02d}.nii.gz"))
        shutil.copy(case_of(synthetic, "synthetic_002")[0], images[-1])

    leftover = tmp_path / "leftover"
    leftover.mkdir()
    (leftover / STOP_FILE).touch()  # an earlier run's request
    result = run_plcl("predict", "--model", str(train / "model.pt"), "--out", str(leftover), "--device", "cpu",
                      "--events", "jsonl", images[0])
    assert result.returncode == 0, result.stderr
    assert not (leftover / STOP_FILE).exists() and (leftover / "predictions" / "v00.seg.nrrd").is_file()

    out = tmp_path / "predict"
    environment = {**os.environ, "PYTHONPATH": str(REPO / "PLCLSegmentation")}
    child = subprocess.Popen([sys.executable, "-m", "PLCLSegmentationLib.engine", "predict", "--model",
                              str(train / "model.pt"), "--out", str(out), "--device", "cpu", "--events", "jsonl",
                              *images], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=environment)
    seen = []
    for line in child.stdout:
        seen.append(json.loads(line))
        if seen[-1]["event"] == "start":
            (out / STOP_FILE).touch()  # asked to stop once it runs
            break
    rest, stderr = child.communicate(timeout=300)
    assert child.returncode == 130, stderr
    assert '"event": "cancelled"' in rest
    assert len(list(out.glob("predictions/*.seg.nrrd"))) < len(images)


def test_every_output_event_kind_the_engine_emits_is_in_the_protocol():
    """... and test_docs holds docs/protocol.md to protocol.py."""
    import re

    from PLCLSegmentationLib.engine import protocol

    engine = REPO / "PLCLSegmentation" / "PLCLSegmentationLib" / "engine"
    emitted = {kind for path in engine.rglob("*.py") for kind in re.findall(r'kind="([a-z_]+)"', path.read_text())}
    assert emitted == set(protocol.OUTPUT_EVENT_KINDS)
