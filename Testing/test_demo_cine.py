"""The cine part of plcl demo: two annotated frames, every frame of a held-out sequence segmented, its
volume curves and ejection fractions against the phantom's known ones; twice into one folder."""

from __future__ import annotations

import json
import threading

import pytest
from conftest import run_plcl

from PLCLSegmentationLib.engine.events import RecordingSink
from PLCLSegmentationLib.engine.lab.demo_cine import run_cine_demo
from PLCLSegmentationLib.engine.lab.synthetic import make_synthetic_dataset

FRAMES = 4


@pytest.mark.slow  # an end-to-end run: `make test-fast` leaves it out
def test_cine_demo_reports_predicted_against_known_volumes_and_runs_twice(tmp_path):
    # The warm start: a model of the 3D demo's configuration, barely trained (the plumbing is tested here).
    data = make_synthetic_dataset(tmp_path / "data", n_cases=1, seed=1)
    result = run_plcl("train", "--data", str(data), "--labeled-cases", "synthetic_001", "--out", str(tmp_path / "init"),
                      "--iterations", "2", "--budget", "quick", "--set", "patch_size=64", "--device", "cpu")
    assert result.returncode == 0, result.stderr
    root = tmp_path / "demo"
    for _ in range(2):  # a second demo into the same folder replaces the first
        sink = RecordingSink()
        report = run_cine_demo(root, tmp_path / "init" / "model.pt", sink, threading.Event(), device="cpu",
                               iterations=2, frames=FRAMES, pixels=64)
    truth = json.loads((root / "synthetic_cine" / "sequences.json").read_text())
    annotated = truth["sequences"]["cine_001"]
    assert report["annotated"] == {"sequence": "cine_001", "frames": sorted(
        [annotated["end_diastole_frame"], annotated["end_systole_frame"]])}
    assert [(r["sequence"], r["role"]) for r in report["sequences"]] == [
        ("cine_003", "held out"), ("cine_001", "annotated"), ("cine_002", "unannotated")]
    assert json.loads((root / "cine_volumes.json").read_text()) == report
    for row in report["sequences"]:
        known = truth["sequences"][row["sequence"]]
        assert row["frames"] == FRAMES
        for structure in ("left ventricle", "right ventricle"):
            values = row["structures"][structure]
            assert values["known_ml"] == known["volumes_ml"][structure] and len(values["predicted_ml"]) == FRAMES
            assert values["known_ejection_fraction"] == known["ejection_fraction"][structure]
            if values["predicted_ejection_fraction"] is not None:
                assert values["ejection_fraction_difference_points"] == (
                    values["predicted_ejection_fraction"] - values["known_ejection_fraction"])
            else:  # no ejection fraction only where the barely trained model found none of the structure
                assert max(values["predicted_ml"]) == 0 and values["ejection_fraction_difference_points"] is None
    # every frame of the held-out sequence segmented by plcl predict, with the engine's curve and sequence
    held_out = json.loads((root / "cine_predict" / "summary.json").read_text())
    assert sorted(v["name"] for v in held_out["volumes"]) == [f"cine_003_t{t:02d}" for t in range(FRAMES)]
    assert held_out["sequences"][0]["segmentation"]
    assert (root / "cine_volume_curve.png").read_bytes()[:4] == b"\x89PNG"
    assert (root / "cine_annotations" / f"cine_001_t{report['annotated']['frames'][0]:02d}.nii.gz").is_file()
