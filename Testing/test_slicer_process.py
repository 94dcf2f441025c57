"""The child-process runner: events without blocking, crash reports, cancel of the whole tree."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest
from slicer_support import FAKE_ENGINE, LAUNCHER, ROOT, alive, synthetic_case

from PLCLSegmentationLib.process import EngineProcess, RunState


def drain(process: EngineProcess, timeout: float = 60.0, until=None) -> list:
    messages = []
    deadline = time.monotonic() + timeout
    while not process.state.finished:
        messages += process.poll()
        if until is not None and until(messages):
            return messages
        assert time.monotonic() < deadline, "the child did not finish in time"
        time.sleep(0.02)
    return messages


def python(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def test_events_logs_and_exit_come_through_the_queue(tmp_path):
    code = ("import json, sys\n"
            "print(json.dumps({'event': 'start', 'device': 'cpu'}), flush=True)\n"
            "print('not an event', flush=True)\n"
            "print('to the log', file=sys.stderr, flush=True)\n"
            "print(json.dumps({'event': 'done', 'out': 'x', 'elapsed_s': 0.1}), flush=True)\n")
    process = EngineProcess(python(code), log_path=tmp_path / "engine.log")
    assert process.state == RunState.IDLE
    process.start()
    assert process.state == RunState.RUNNING
    messages = drain(process)
    assert process.state == RunState.DONE and process.returncode == 0
    events = [m.data["event"] for m in messages if m.kind == "event"]
    logs = [m.data for m in messages if m.kind == "log"]
    assert events == ["start", "done"]
    assert set(logs) == {"not an event", "to the log"}
    assert messages[-1].kind == "exit"
    assert "to the log" in (tmp_path / "engine.log").read_text()


def test_poll_never_blocks():
    process = EngineProcess(python("import time; time.sleep(3)"))
    process.start()
    start = time.monotonic()
    assert process.poll() == []
    assert time.monotonic() - start < 0.1
    process.kill()
    drain(process)
    assert process.state == RunState.CANCELLED


def test_a_crash_reports_its_error_and_the_last_lines_of_its_log():
    code = "import sys\nprint('loading volumes', file=sys.stderr)\nraise MemoryError('CUDA out of memory')\n"
    process = EngineProcess(python(code))
    process.start()
    drain(process)
    assert process.state == RunState.FAILED and process.returncode == 1
    assert process.error == "MemoryError: CUDA out of memory"
    assert "loading volumes" in process.tail and any(line.startswith("Traceback") for line in process.tail)


def test_an_error_event_is_the_message():
    code = ("import json, sys\nprint(json.dumps({'event': 'error', 'message': 'a.nrrd: file not found', "
            "'file': 'a.nrrd'}))\nsys.exit(1)\n")
    process = EngineProcess(python(code))
    process.start()
    drain(process)
    assert process.state == RunState.FAILED and process.error == "a.nrrd: file not found"


def test_a_missing_interpreter_fails_to_start():
    process = EngineProcess(["/nonexistent/python", "-m", "x"])
    with pytest.raises(OSError):
        process.start()
    assert process.state == RunState.FAILED and "Could not start" in process.error


def test_cancel_ends_the_whole_process_tree(tmp_path):
    # A training run that spawns a grandchild (as a data loader might); cancel mid-run.
    grandchild = tmp_path / "grandchild.pid"
    images = [synthetic_case("synthetic_001")[0], synthetic_case("synthetic_002")[0]]
    labels = synthetic_case("synthetic_001")[1]
    environment = {**os.environ, "FAKE_ENGINE_STEP_S": "0.05", "FAKE_ENGINE_GRANDCHILD": str(grandchild)}
    process = EngineProcess([sys.executable, str(FAKE_ENGINE), "train", "--labeled", str(images[0]), str(labels),
                             "--unlabeled", str(images[1]), "--out", str(tmp_path / "out"), "--iterations", "1000",
                             "--events", "jsonl"], env=environment)
    process.start()
    drain(process, until=lambda ms: any(m.kind == "event" and m.data["event"] == "progress" for m in ms))
    pid = int(grandchild.read_text())
    assert alive(pid)
    process.cancel()
    assert process.state == RunState.CANCELLING
    messages = drain(process, timeout=30)
    assert process.state == RunState.CANCELLED and process.returncode == 130
    assert any(m.kind == "event" and m.data["event"] == "cancelled" for m in messages)
    time.sleep(0.2)
    assert not alive(pid), "a grandchild of the engine survived the cancel"
    assert not alive(process.pid)


def test_cancel_kills_a_child_that_ignores_it():
    code = ("import json, signal, time\n"
            "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
            "print(json.dumps({'event': 'start'}), flush=True)\n"
            "time.sleep(60)\n")
    process = EngineProcess(python(code), grace_s=1.0)
    process.start()
    drain(process, until=lambda ms: any(m.kind == "event" for m in ms))
    started = time.monotonic()
    process.cancel()
    drain(process, timeout=20)
    assert process.state == RunState.CANCELLED and process.returncode == -9
    assert time.monotonic() - started < 10





def tiny_case(folder: Path) -> list[str]:
    """Two small volumes, the first with a label map: (image, label, unannotated image)."""
    import SimpleITK as sitk
    from conftest import make_image, phantom

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for seed in (0, 1):
        image, labels = phantom((5, 64, 64), seed=seed)
        sitk.WriteImage(make_image(image), str(folder / f"case{seed}.nrrd"))
        paths.append(str(folder / f"case{seed}.nrrd"))
        if seed == 0:
            sitk.WriteImage(make_image(labels), str(folder / "case0_label.nrrd"))
            paths.append(str(folder / "case0_label.nrrd"))
    return paths


def test_cancel_through_a_launcher_stops_the_real_engine_cleanly(tmp_path):
    """PythonSlicer starts the real Python as its child and forwards no signal: cancel must ask the
    engine itself (the stop file), which finishes its step, saves a checkpoint and says so."""
    import importlib.util

    if importlib.util.find_spec("torch") is None:
        pytest.skip("torch is not installed: the real engine cannot run")
    image, label, other = tiny_case(tmp_path / "data")
    out = tmp_path / "out"
    environment = {**os.environ, "PYTHONPATH": str(ROOT / "PLCLSegmentation")}
    process = EngineProcess([sys.executable, str(LAUNCHER), sys.executable, "-m", "PLCLSegmentationLib.engine",
                             "train", "--labeled", image, label, "--unlabeled", other, "--out", str(out),
                             "--budget", "quick", "--iterations", "100000", "--device", "cpu", "--events", "jsonl",
                             "--set", "patch_size=64", "--set", "batch_size=2", "--set", "contrastive_images=2"],
                            env=environment, grace_s=60, stop_file=out / "stop.request")
    process.start()
    messages = drain(process, timeout=180, until=lambda ms: any(
        m.kind == "event" and m.data["event"] == "progress" for m in ms))
    assert not process.state.finished, "\n".join(process.tail)
    started = time.monotonic()
    process.cancel()
    messages += drain(process, timeout=90)
    events = [m.data for m in messages if m.kind == "event"]
    cancelled = [e for e in events if e["event"] == "cancelled"]
    assert cancelled, "the engine was killed, not stopped: " + "\n".join(process.tail)
    assert process.state == RunState.CANCELLED and process.returncode == 130
    assert cancelled[0]["checkpoint"] and Path(cancelled[0]["checkpoint"]).is_file()
    assert time.monotonic() - started < 30, "the engine took longer than a step to stop"
    assert not alive(process.pid)


KILLED_PARENT = """\
import json, os, signal, sys, time
from PLCLSegmentationLib.process import EngineProcess
process = EngineProcess(json.loads(sys.argv[1]), stop_file=sys.argv[2])
process.start()
print(process.pid, flush=True)
deadline = time.monotonic() + 180
while not any(m.kind == "event" and m.data["event"] == "progress" for m in process.poll()):
    if process.state.finished or time.monotonic() > deadline:
        sys.exit("the engine did not start training: " + "; ".join(process.tail))
    time.sleep(0.05)
os.kill(os.getpid(), signal.SIGKILL)  # Slicer crashes (or is killed) in the middle of a training
"""


def test_the_engine_stops_by_itself_when_slicer_is_killed(tmp_path):
    """A crashed Slicer leaves no engine training: started the module's way (through a launcher that
    forwards stdin, like PythonSlicer), the engine sees its stdin pipe end, saves a checkpoint and exits."""
    import importlib.util
    import json
    import subprocess

    if importlib.util.find_spec("torch") is None:
        pytest.skip("torch is not installed: the real engine cannot run")
    image, label, other = tiny_case(tmp_path / "data")
    out = tmp_path / "out"
    argv = [sys.executable, str(LAUNCHER), sys.executable, "-m", "PLCLSegmentationLib.engine", "train",
            "--labeled", image, label, "--unlabeled", other, "--out", str(out), "--budget", "quick",
            "--iterations", "100000", "--device", "cpu", "--events", "jsonl", "--set", "patch_size=64",
            "--set", "batch_size=2", "--set", "contrastive_images=2"]
    environment = {**os.environ, "PYTHONPATH": str(ROOT / "PLCLSegmentation")}
    slicer = subprocess.Popen([sys.executable, "-c", KILLED_PARENT, json.dumps(argv), str(out / "stop.request")],
                              env=environment, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    engine = int(slicer.stdout.readline())
    try:
        assert slicer.wait(240) == -9, slicer.stderr.read()
        killed = time.monotonic()
        while alive(engine):
            assert time.monotonic() - killed < 60, "the engine trains on after Slicer was killed"
            time.sleep(0.1)
        assert (out / "checkpoint.pt").is_file(), "the engine was not stopped cleanly (no checkpoint)"
    finally:
        if alive(engine):
            os.killpg(engine, 9)
