"""Faults met with the real thing, not a patched writer: a file-size limit set on the child process
(RLIMIT_FSIZE, as ``ulimit -f`` does) for model.pt, checkpoint.pt, predictions and summaries, and a
training that diverges. Each ends with one line naming the file, no traceback, no torn file, and
nothing saved that looks like a result."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import SimpleITK as sitk
import torch
from conftest import REPO, make_image, phantom

resource = pytest.importorskip("resource")  # POSIX only

TINY = ["--budget", "quick", "--set", "patch_size=32", "--set", "levels=3", "--device", "cpu"]


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    from PLCLSegmentationLib.engine.files.volumes import ClassInfo
    from PLCLSegmentationLib.engine.method.modelfile import ModelInfo, save_model

    folder = tmp_path_factory.mktemp("faults")
    image, labels = phantom()
    sitk.WriteImage(make_image(image), str(folder / "img.nii.gz"))
    sitk.WriteImage(make_image(labels), str(folder / "lbl.nii.gz"))
    sitk.WriteImage(make_image(image[:, ::-1]), str(folder / "other.nii.gz"))
    info = ModelInfo(classes=[ClassInfo(1, "ring", (1.0, 0.0, 0.0)), ClassInfo(2, "disc", (0.0, 0.0, 1.0))],
                     target_spacing_mm=1.0, patch_size=32, base_channels=4, levels=3, embedding_dim=8,
                     intensity_percentiles=(1.0, 99.0), inference_tile=64)
    torch.manual_seed(0)
    save_model(folder / "model.pt", info.build_network(), info)
    return folder


def _limit(max_bytes: int):
    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the write fails with EFBIG instead of killing
        resource.setrlimit(resource.RLIMIT_FSIZE, (max_bytes, max_bytes))
    return apply


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO / "PLCLSegmentation")}


def plcl(*args: str, max_bytes: int | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "PLCLSegmentationLib.engine", *args], capture_output=True,
                          text=True, env=_env(), cwd=cwd, timeout=300,
                          preexec_fn=None if max_bytes is None else _limit(max_bytes))


def error_line(result: subprocess.CompletedProcess) -> str:
    assert "Traceback" not in result.stderr, result.stderr
    lines = [ln for ln in result.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, result.stderr
    return lines[0]


def no_torn_files(folder: Path) -> None:
    assert not [p for p in folder.rglob("*") if ".partial" in p.name]


def test_model_file_over_a_file_size_limit_names_the_file(base, tmp_path):
    """save_model, the writer of model.pt and its snapshots, under a limit below the model's size."""
    code = ("import sys, torch\n"
            "from PLCLSegmentationLib.engine.errors import OutputError\n"
            "from PLCLSegmentationLib.engine.method.modelfile import read_model, save_model\n"
            f"info, state = read_model({str(base / 'model.pt')!r})\n"
            "net = info.build_network(); net.load_state_dict(state)\n"
            "try:\n"
            f"    save_model({str(tmp_path / 'model.pt')!r}, net, info)\n"
            "except OutputError as error:\n"
            "    print('error:', error); sys.exit(1)\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=_env(), timeout=120,
                            preexec_fn=_limit(20_000))
    assert result.returncode == 1, result.stderr
    assert "model.pt" in result.stdout and "largest file size" in result.stdout, result.stdout
    assert "unexpected pos" not in result.stdout + result.stderr
    assert list(tmp_path.iterdir()) == []


def test_checkpoint_over_a_file_size_limit_keeps_the_earlier_checkpoint(base, tmp_path):
    """A run cancelled with a checkpoint, resumed under a limit smaller than the checkpoint: the
    new checkpoint cannot be written, the error names it, the earlier one is left as it was."""
    shutil.copytree(base, tmp_path / "in")
    d = tmp_path / "in"
    child = subprocess.Popen([sys.executable, "-m", "PLCLSegmentationLib.engine", "train", "--labeled",
                              str(d / "img.nii.gz"), str(d / "lbl.nii.gz"), "--unlabeled", str(d / "other.nii.gz"),
                              "--out", str(d / "run"), "--iterations", "40", *TINY, "--events", "jsonl"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())
    for line in child.stdout:
        if json.loads(line)["event"] == "progress":
            child.send_signal(signal.SIGINT)
            break
    child.communicate(timeout=300)
    assert child.returncode == 130
    checkpoint = d / "run" / "checkpoint.pt"
    earlier = checkpoint.read_bytes()
    result = plcl("train", "--resume", str(d / "run"), max_bytes=len(earlier) // 2)
    assert result.returncode == 1, result.stderr
    line = error_line(result)
    assert str(checkpoint) in line and "largest file size" in line, line
    assert checkpoint.read_bytes() == earlier
    assert not (d / "run" / "model.pt").exists()
    no_torn_files(d / "run")


def test_first_checkpoint_over_a_file_size_limit(base, tmp_path):
    result = plcl("train", "--labeled", str(base / "img.nii.gz"), str(base / "lbl.nii.gz"), "--unlabeled",
                  str(base / "other.nii.gz"), "--out", str(tmp_path / "run"), "--iterations", "2", *TINY,
                  max_bytes=100_000)
    assert result.returncode == 1, result.stderr
    line = error_line(result)
    assert "checkpoint.pt" in line and "largest file size" in line, line
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["job.json"]


def test_prediction_over_a_file_size_limit(base, tmp_path):
    result = plcl("predict", "--model", str(base / "model.pt"), "--out", str(tmp_path / "out"), "--device", "cpu",
                  str(base / "other.nii.gz"), max_bytes=1_000)
    assert result.returncode == 1, result.stderr
    line = error_line(result)
    assert "other" in line and "largest file size" in line, line
    assert not (tmp_path / "out" / "summary.json").exists()
    no_torn_files(tmp_path / "out")


def test_summary_over_a_file_size_limit(base, tmp_path):
    """Many small volumes: each prediction fits under the limit, the summary listing them all does not."""
    images = []
    for index in range(16):
        shutil.copy(base / "other.nii.gz", tmp_path / f"volume_with_a_long_name_{index:02d}.nii.gz")
        images.append(str(tmp_path / f"volume_with_a_long_name_{index:02d}.nii.gz"))
    result = plcl("predict", "--model", str(base / "model.pt"), "--out", str(tmp_path / "out"), "--device", "cpu",
                  *images, max_bytes=6_000)
    assert result.returncode == 1, result.stderr
    line = error_line(result)
    assert "summary.json" in line and "largest file size" in line, line
    assert len(list((tmp_path / "out" / "predictions").iterdir())) == 16
    assert not (tmp_path / "out" / "summary.json").exists()
    no_torn_files(tmp_path / "out")


def test_a_diverging_training_ends_with_an_error_and_saves_no_model(base, tmp_path):
    """learning_rate=1e9: the weights stop being finite; no model.pt, no snapshot, no checkpoint of them."""
    out = tmp_path / "run"
    result = plcl("train", "--labeled", str(base / "img.nii.gz"), str(base / "lbl.nii.gz"), "--unlabeled",
                  str(base / "other.nii.gz"), "--out", str(out), "--iterations", "4", *TINY, "--set",
                  "learning_rate=1e9", "--set", "snapshots=2")
    assert result.returncode == 1, result.stderr
    line = error_line(result)
    assert str(out) in line and "training diverged" in line and "no model was saved" in line, line
    assert sorted(p.name for p in out.iterdir()) == ["job.json"]


def test_a_model_with_nan_weights_is_refused(base, tmp_path):
    payload = torch.load(base / "model.pt", weights_only=True)
    first = next(k for k, v in payload["state_dict"].items() if v.is_floating_point())
    payload["state_dict"][first] = torch.full_like(payload["state_dict"][first], float("nan"))
    torch.save(payload, tmp_path / "nan.pt")
    result = plcl("predict", "--model", str(tmp_path / "nan.pt"), "--out", str(tmp_path / "out"), "--device", "cpu",
                  str(base / "other.nii.gz"))
    assert result.returncode == 1, result.stderr
    line = error_line(result)
    assert "nan.pt" in line and "NaN or infinite" in line, line
    assert not (tmp_path / "out").exists()


def test_a_leftover_stop_request_does_not_cancel_a_new_run(base, tmp_path):
    """A stop.request left in a folder before a run starts is not that run's: ignored, then removed."""
    from PLCLSegmentationLib.engine.cli import main

    out = tmp_path / "out"
    out.mkdir()
    (out / "stop.request").write_text("")
    assert main(["predict", "--model", str(base / "model.pt"), "--out", str(out), "--device", "cpu",
                 str(base / "other.nii.gz")]) == 0
    assert (out / "predictions" / "other.seg.nrrd").is_file() and not (out / "stop.request").exists()


def test_a_one_frame_sequence_has_no_ejection_fraction():
    from PLCLSegmentationLib.engine.run.volume_curve import curve_summary

    assert curve_summary({"cavity": [52.0]})["cavity"]["ejection_fraction"] is None
    assert curve_summary({"cavity": [100.0, 40.0]})["cavity"]["ejection_fraction"] == 60.0


def test_a_plain_label_map_named_seg_nrrd_is_read_as_a_label_map(base, tmp_path):
    from PLCLSegmentationLib.engine.files.volumes import read_annotation, read_volume

    labels = phantom()[1]
    sitk.WriteImage(make_image(labels), str(tmp_path / "plain.seg.nrrd"))
    read, segments = read_annotation(tmp_path / "plain.seg.nrrd", read_volume(base / "img.nii.gz"))
    assert segments is None and (read == labels).all()
