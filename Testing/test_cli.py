"""End to end through the command line on SYNTHETIC oblique volumes (some stored with permuted axes):
events, files, grids, cancel and resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import REPO, case_of, events, run_plcl

FAST = ["--budget", "quick", "--set", "patch_size=64", "--set", "inference_tile=128", "--device", "cpu"]


@pytest.mark.slow  # an end-to-end run: `make test-fast` leaves it out
def test_train_writes_predictions_on_each_input_grid_then_predict_and_evaluate(synthetic, tmp_path):
    out = tmp_path / "run"
    unlabeled = ["synthetic_002", "synthetic_003"]
    result = run_plcl("train", "--data", str(synthetic), "--labeled-cases", "synthetic_001",
                      "--unlabeled-cases", ",".join(unlabeled), "--out", str(out), "--iterations", "8",
                      "--events", "jsonl", *FAST)
    assert result.returncode == 0, result.stderr
    log = events(result.stdout)
    kinds = [e["event"] for e in log]
    assert kinds[0] == "start" and kinds[-1] == "done"
    stages = [e["stage"] for e in log if e["event"] == "stage"]
    assert stages[:3] == ["prepare", "warmup", "pseudo_labels"] and "joint" in stages and stages[-1] == "predict"
    progress = [e for e in log if e["event"] == "progress" and e["stage"] != "predict"]
    assert progress[-1]["iteration"] == progress[-1]["total"] == 8
    # The default is self-training: the pseudo-labels in the segmentation loss, no contrastive term.
    assert {"segmentation", "pseudo_segmentation"} <= set(progress[-1]["losses"])
    assert "contrastive" not in progress[-1]["losses"]
    assert all(e["eta_s"] >= 0 for e in progress)
    written = {(e["kind"], e["name"]) for e in log if e["event"] == "output"}
    for name in unlabeled:
        assert ("prediction", name) in written and ("uncertainty", name) in written
        image = sitk.ReadImage(str(synthetic / "images" / f"{name}.nii.gz"))
        for path in (out / "predictions" / f"{name}.seg.nrrd", out / "uncertainty" / f"{name}.nrrd"):
            produced = sitk.ReadImage(str(path))
            assert produced.GetSize() == image.GetSize()
            np.testing.assert_allclose(produced.GetSpacing(), image.GetSpacing(), rtol=1e-6)
            np.testing.assert_allclose(produced.GetOrigin(), image.GetOrigin(), atol=1e-6)
            np.testing.assert_allclose(produced.GetDirection(), image.GetDirection(), atol=1e-6)
    summary = json.loads((out / "summary.json").read_text())
    assert [c["name"] for c in summary["classes"]] == ["right ventricle", "myocardium", "left ventricle"]
    scores = [v["uncertainty_score"] for v in summary["volumes"]]
    assert scores == sorted(scores, reverse=True) and all(0 <= s <= 1 for s in scores)

    # Apply the saved model to another volume, then score it.
    predicted = tmp_path / "applied"
    result = run_plcl("predict", "--model", str(out / "model.pt"), "--out", str(predicted),
                      case_of(synthetic, "synthetic_005")[0], "--device", "cpu")
    assert result.returncode == 0, result.stderr
    assert (predicted / "predictions" / "synthetic_005.seg.nrrd").is_file()
    result = run_plcl("evaluate", "--pred", str(predicted), "--data", str(synthetic), "--split", "val")
    assert result.returncode == 0, result.stderr
    assert "synthetic_005" in result.stdout and "HD95" in result.stdout
    report = json.loads((predicted / "metrics.json").read_text())
    assert report["n_cases"] == 1 and 0 <= report["mean"]["mean_dice"] <= 1


@pytest.mark.slow  # an end-to-end run: `make test-fast` leaves it out
def test_cancel_saves_a_checkpoint_and_resume_finishes(synthetic, tmp_path):
    out = tmp_path / "run"
    image, label = case_of(synthetic, "synthetic_001")
    command = [sys.executable, "-m", "PLCLSegmentationLib.engine", "train", "--labeled", image, label,
               "--unlabeled", case_of(synthetic, "synthetic_002")[0], "--out", str(out), "--iterations", "12",
               "--events", "jsonl", *FAST]
    env = {**os.environ, "PYTHONPATH": str(REPO / "PLCLSegmentation")}
    child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    seen = []
    for line in child.stdout:
        seen.append(json.loads(line))
        if seen[-1]["event"] == "progress" and seen[-1]["iteration"] >= 3:
            child.send_signal(signal.SIGINT)
            break
    rest, stderr = child.communicate(timeout=120)
    seen += events(rest)
    assert child.returncode == 130, stderr
    cancelled = seen[-1]
    assert cancelled["event"] == "cancelled" and cancelled["checkpoint"] == str(out / "checkpoint.pt")
    assert (out / "checkpoint.pt").is_file() and not (out / "model.pt").exists()
    stopped_at = max(e["iteration"] for e in seen if e["event"] == "progress")
    assert stopped_at < 12

    result = run_plcl("train", "--resume", str(out), "--events", "jsonl")
    assert result.returncode == 0, result.stderr
    resumed = [e for e in events(result.stdout) if e["event"] == "progress" and e["stage"] != "predict"]
    assert resumed[0]["iteration"] > stopped_at and resumed[-1]["iteration"] == 12
    assert (out / "model.pt").is_file() and (out / "predictions" / "synthetic_002.seg.nrrd").is_file()


def test_seg_nrrd_annotation_names_colours_and_terminology_reach_the_outputs(synthetic, tmp_path):
    """A Slicer segmentation as annotation: its segments define the output segments."""
    import slicerio

    from PLCLSegmentationLib.engine.files.volumes import ClassInfo, read_volume, write_segmentation

    image, label = case_of(synthetic, "synthetic_001")
    volume = read_volume(image)
    labels = sitk.GetArrayFromImage(sitk.ReadImage(label))
    terminology = {"contextName": "Segmentation category and type - 3D Slicer General Anatomy list",
                   "category": ["SCT", "123037004", "Anatomical Structure"],
                   "type": ["SCT", "80891009", "Heart"]}
    classes = [ClassInfo(1, "RV cavity", (0.1, 0.8, 0.2), terminology), ClassInfo(2, "LV wall", (0.9, 0.7, 0.1)),
               ClassInfo(3, "LV cavity", (0.8, 0.1, 0.1))]
    write_segmentation(tmp_path / "annotation.seg.nrrd", labels, volume.grid, classes)
    out = tmp_path / "run"
    result = run_plcl("train", "--labeled", image, str(tmp_path / "annotation.seg.nrrd"), "--unlabeled",
                      case_of(synthetic, "synthetic_002")[0], "--out", str(out), "--iterations", "4", *FAST)
    assert result.returncode == 0, result.stderr
    seg = slicerio.read_segmentation(str(out / "predictions" / "synthetic_002.seg.nrrd"))
    assert [s["name"] for s in seg["segments"]] == ["RV cavity", "LV wall", "LV cavity"]
    assert seg["segments"][0]["color"] == [0.1, 0.8, 0.2]
    assert seg["segments"][0]["terminology"]["type"] == terminology["type"]


@pytest.mark.slow  # an end-to-end run: `make test-fast` leaves it out
def test_wall_clock_budget_and_snapshots(synthetic, tmp_path):
    """--minutes trains for that long (pseudo-labelling included) and snapshots land in between."""
    out = tmp_path / "run"
    image, label = case_of(synthetic, "synthetic_001")
    result = run_plcl("train", "--labeled", image, label, "--unlabeled", case_of(synthetic, "synthetic_002")[0],
                      "--out", str(out), "--minutes", "0.15", "--set", "snapshots=2", "--events", "jsonl", *FAST)
    assert result.returncode == 0, result.stderr
    training = json.loads((out / "training.json").read_text())
    assert 9 <= training["train_seconds"] < 60 and training["iterations"] > 0
    log = events(result.stdout)
    assert [e["kind"] for e in log if e["event"] == "output"].count("snapshot") == 2
    assert sorted(p.name for p in (out / "snapshots").iterdir()) == ["model_01.pt", "model_02.pt"]
    assert "joint" in [e["stage"] for e in log if e["event"] == "stage"]
