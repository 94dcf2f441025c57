"""DICOM in and out through the command line, as a user reaches it: plcl train and plcl predict on DICOM
series made from the SYNTHETIC phantoms, --format dicom-seg giving SEGs that dcmqi (the converter Slicer
uses) converts back to exactly the label maps written beside them; a cine DICOM study segmented frame
by frame like the same cine as a 4D NIfTI."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import case_of, events, run_plcl
from dicom_series import on_grid, write_series
from test_output_formats import DCMQI

from PLCLSegmentationLib.engine.files.volumes import Grid, read_volume
from PLCLSegmentationLib.engine.lab.synthetic import _case
from PLCLSegmentationLib.engine.lab.synthetic_cine import make_sequence, write_4d

TRAIN = ["--iterations", "30", "--budget", "quick", "--set", "patch_size=64", "--device", "cpu"]


@pytest.fixture(scope="module")
def trained(synthetic, tmp_path_factory) -> tuple[Path, Path]:
    """plcl train with a DICOM series unannotated and --format dicom-seg: (run folder, the series)."""
    root = tmp_path_factory.mktemp("dicom_train")
    voxels, _, grid = _case(0, 2, oblique=True)
    series = write_series(root / "oblique_series", voxels, grid.spacing, grid.origin, grid.direction_matrix,
                          rng=np.random.default_rng(0))
    image, label = case_of(synthetic, "synthetic_001")
    result = run_plcl("train", "--labeled", image, label, "--unlabeled", str(series), "--out", str(root / "run"),
                      "--format", "dicom-seg", "--format", "nifti", *TRAIN, "--events", "jsonl")
    assert result.returncode == 0, result.stderr
    return root / "run", series


def short_axis_stack(cine) -> tuple[np.ndarray, Grid]:
    """A SYNTHETIC cine (its slices along i) with its slices along k, as DICOM stores them: the same voxels
    in space (i and k swapped, the new i reversed to keep the axes right-handed)."""
    d, (si, sj, sk), nk = cine.grid.direction_matrix, cine.grid.spacing, cine.grid.size[2]
    image = np.ascontiguousarray(cine.image.transpose(0, 3, 2, 1)[..., ::-1])
    origin = np.asarray(cine.grid.origin) + (nk - 1) * sk * d[:, 2]
    direction = np.column_stack([-d[:, 2], d[:, 1], d[:, 0]])
    return image, Grid(image.shape[1:][::-1], (sk, sj, si), tuple(origin.tolist()), tuple(direction.ravel().tolist()))


def labels_of(path: str) -> tuple[np.ndarray, Grid]:
    image = sitk.ReadImage(path)
    return sitk.GetArrayFromImage(image), Grid.of(image)


def dcmqi_labels(seg: str, folder: Path, classes: list[dict]) -> tuple[np.ndarray, Grid]:
    """dcmqi's label map in the model's class values (its segment labels are the class names)."""
    names = {c["name"]: c["value"] for c in classes}
    folder.mkdir()
    done = subprocess.run([DCMQI, "--inputDICOM", seg, "--outputDirectory", str(folder), "--outputType", "nrrd",
                           "--mergeSegments"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    meta = json.loads((folder / "meta.json").read_text())
    lut = np.zeros(256, np.uint8)
    for segment in meta["segmentAttributes"][0]:
        lut[int(segment["labelID"])] = names[segment["SegmentLabel"]]
    image = sitk.ReadImage(str(folder / "1.nrrd"))
    return lut[sitk.GetArrayFromImage(image)], Grid.of(image)


def test_train_writes_the_formats_asked_for_and_dcmqi_reads_the_seg_back_exactly(trained, tmp_path):
    run, series = trained
    summary = json.loads((run / "summary.json").read_text())
    entry = next(e for e in summary["volumes"] if e["name"] == series.name)
    assert set(entry["files"]) == {"nifti", "dicom-seg"} and entry["segmentation"] is None
    assert sorted(json.loads((run / "job.json").read_text())["formats"]) == ["dicom-seg", "nifti"]
    nifti, grid = labels_of(entry["files"]["nifti"][0])
    assert len(np.unique(nifti)) > 1, "the model segments nothing: the comparison would prove little"
    read, read_grid = dcmqi_labels(entry["files"]["dicom-seg"][0], tmp_path / "dcmqi", summary["classes"])
    assert np.array_equal(on_grid(read, read_grid, grid), nifti)


def test_predict_format_dicom_seg_on_a_dicom_series_gives_the_exact_label_map(trained, tmp_path):
    run, _ = trained
    voxels, _, grid = _case(0, 3, oblique=True)
    order = list(range(grid.size[2]))[::-1]  # files written against the slice normal
    series = write_series(tmp_path / "series", voxels, grid.spacing, grid.origin, grid.direction_matrix, order=order)
    out = tmp_path / "out"
    result = run_plcl("predict", "--model", str(run / "model.pt"), "--out", str(out), "--format", "dicom-seg",
                      "--format", "seg.nrrd", "--format", "nifti", "--device", "cpu", "--events", "jsonl",
                      str(series))
    assert result.returncode == 0, result.stderr
    written = sorted(p.name for p in (out / "predictions").iterdir())
    assert written == ["series.nii.gz", "series.seg.dcm", "series.seg.nrrd"]
    kinds = [(e["kind"], Path(e["path"]).name) for e in events(result.stdout) if e["event"] == "output"]
    assert ("prediction", "series.seg.dcm") in kinds
    summary = json.loads((out / "summary.json").read_text())
    nifti, nifti_grid = labels_of(str(out / "predictions" / "series.nii.gz"))
    np.testing.assert_allclose(nifti_grid.ijk_to_lps(), read_volume(series).grid.ijk_to_lps(), atol=1e-4)
    read, read_grid = dcmqi_labels(str(out / "predictions" / "series.seg.dcm"), tmp_path / "dcmqi",
                                   summary["classes"])
    assert np.array_equal(on_grid(read, read_grid, nifti_grid), nifti)


def test_a_cine_dicom_study_is_segmented_every_frame_like_a_4d_nifti(trained, tmp_path):
    run, _ = trained
    cine = make_sequence(0, 1, n_frames=5, slices=9, pixels=64)
    image, grid = short_axis_stack(cine)
    study = write_series(tmp_path / "study", image, grid.spacing, grid.origin, grid.direction_matrix,
                         trigger_ms=[50.0 * t for t in range(5)], series_per_slice=True,
                         order=[3, 1, 0, 2, 8, 5, 4, 7, 6], rng=np.random.default_rng(1))
    nifti_4d = tmp_path / "study.nii.gz"
    write_4d(nifti_4d, image, grid, cine.time_step_s)
    outs = {}
    for name, image in (("dicom", study), ("nifti", nifti_4d)):
        outs[name] = tmp_path / f"out_{name}"
        formats = ["--format", "nifti"] + (["--format", "dicom-seg"] if name == "dicom" else [])
        result = run_plcl("predict", "--model", str(run / "model.pt"), "--out", str(outs[name]), *formats,
                          "--device", "cpu", str(image))
        assert result.returncode == 0, result.stderr
    summaries = {name: json.loads((out / "summary.json").read_text()) for name, out in outs.items()}
    frames = summaries["dicom"]["sequences"][0]["frames"]
    assert frames == summaries["nifti"]["sequences"][0]["frames"] == [f"study_t{t:02d}" for t in range(5)]
    for frame in frames:
        dicom, dicom_grid = labels_of(str(outs["dicom"] / "predictions" / f"{frame}.nii.gz"))
        nifti, nifti_grid = labels_of(str(outs["nifti"] / "predictions" / f"{frame}.nii.gz"))
        np.testing.assert_allclose(dicom_grid.ijk_to_lps(), nifti_grid.ijk_to_lps(), atol=1e-4)
        assert np.array_equal(dicom, nifti), frame
    curve = summaries["dicom"]["sequences"][0]["volume_summary"]
    segs = sorted(p.name for p in (outs["dicom"] / "predictions").glob("*.seg.dcm"))
    assert segs and len(segs) <= 2 and all(s[:-len(".seg.dcm")] in frames for s in segs)
    entries = {e["name"]: e for e in summaries["dicom"]["volumes"]}
    for seg in segs:  # each SEG is its frame's label map, and its entry lists it
        frame = seg[:-len(".seg.dcm")]
        assert entries[frame]["files"]["dicom-seg"] == [str(outs["dicom"] / "predictions" / seg)]
        labels, grid = labels_of(str(outs["dicom"] / "predictions" / f"{frame}.nii.gz"))
        read, read_grid = dcmqi_labels(str(outs["dicom"] / "predictions" / seg), tmp_path / f"dcmqi_{frame}",
                                       summaries["dicom"]["classes"])
        assert np.array_equal(on_grid(read, read_grid, grid), labels)
    # the SEGs are the end-diastolic and end-systolic frames (one where nothing changes): from the volume
    # curve, the extremes of the class whose volume changes most (a ventricle's cavity)
    changing = [s for s in curve.values() if s["max_ml"] > 0 and s["max_ml"] > s["min_ml"]]
    if changing:
        most = max(changing, key=lambda s: (s["max_ml"] - s["min_ml"]) / s["max_ml"])
        assert segs == sorted({f"{frames[most['max_frame']]}.seg.dcm", f"{frames[most['min_frame']]}.seg.dcm"})
    else:
        assert segs == ["study_t00.seg.dcm"]


def test_dicom_seg_frames_all_gives_one_seg_per_frame(trained, tmp_path):
    run, _ = trained
    image, grid = short_axis_stack(make_sequence(0, 2, n_frames=4, slices=9, pixels=64))
    series = write_series(tmp_path / "cine", image, grid.spacing, grid.origin, grid.direction_matrix,
                          trigger_ms=[30.0 * t for t in range(4)],
                          rng=np.random.default_rng(2))
    out = tmp_path / "out"
    result = run_plcl("predict", "--model", str(run / "model.pt"), "--out", str(out), "--format", "dicom-seg",
                      "--dicom-seg-frames", "all", "--device", "cpu", str(series))
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in (out / "predictions").iterdir()) == [f"cine_t{t:02d}.seg.dcm" for t in range(4)]
