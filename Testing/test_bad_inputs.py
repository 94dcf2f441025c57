"""Bad input: one line naming the file and the problem, a non-zero exit, and no output folder."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import make_image, phantom

from PLCLSegmentationLib.engine.cli import main


@pytest.fixture()
def case(tmp_path):
    image, labels = phantom()
    sitk.WriteImage(make_image(image), str(tmp_path / "img.nii.gz"))
    sitk.WriteImage(make_image(labels), str(tmp_path / "lbl.nii.gz"))
    sitk.WriteImage(make_image(image[:, ::-1]), str(tmp_path / "other.nii.gz"))
    return tmp_path


def _train(tmp_path, image, label, *extra, out=None):
    out = out or tmp_path / "out"
    code = main(["train", "--labeled", str(image), str(label), "--unlabeled", str(tmp_path / "other.nii.gz"),
                 "--out", str(out), "--iterations", "2", "--budget", "quick", "--set", "patch_size=32",
                 "--set", "levels=3", *extra])
    return code, out


def _assert_one_line_error(capsys, *fragments):
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    assert "Traceback" not in err


def test_label_on_another_grid(case, capsys):
    sitk.WriteImage(make_image(phantom()[1], origin=(0.0, 0.0, 0.0)), str(case / "moved.nii.gz"))
    code, out = _train(case, case / "img.nii.gz", case / "moved.nii.gz")
    assert code == 1 and not out.exists()
    _assert_one_line_error(capsys, "moved.nii.gz", "not on the grid of image")


def test_label_values_outside_the_class_list(case, capsys):
    (case / "images").mkdir()
    (case / "labels").mkdir()
    image, labels = phantom()
    labels[0, 0, 0] = 7
    sitk.WriteImage(make_image(image), str(case / "images" / "a.nii.gz"))
    sitk.WriteImage(make_image(labels), str(case / "labels" / "a.nii.gz"))
    (case / "dataset.json").write_text(json.dumps({"labels": {"0": "bg", "1": "ring", "2": "disc"},
                                                   "cases": {"train": ["a"]}}))
    out = case / "out"
    code = main(["train", "--data", str(case), "--labeled-cases", "a", "--out", str(out), "--iterations", "1"])
    assert code == 1 and not out.exists()
    _assert_one_line_error(capsys, "a.nii.gz", "label value 7 outside the classes")


def test_annotation_without_foreground(case, capsys):
    sitk.WriteImage(make_image(np.zeros_like(phantom()[1])), str(case / "empty.nii.gz"))
    code, out = _train(case, case / "img.nii.gz", case / "empty.nii.gz")
    assert code == 1 and not out.exists()
    _assert_one_line_error(capsys, "empty.nii.gz", "no foreground")


def test_2d_image(case, capsys):
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((20, 20), np.int16)), str(case / "flat.nrrd"))
    code, out = _train(case, case / "flat.nrrd", case / "lbl.nii.gz")
    assert code == 1 and not out.exists()
    _assert_one_line_error(capsys, "flat.nrrd", "2D image")


def test_4d_image(case, capsys):
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((2, 3, 8, 8), np.int16), isVector=False), str(case / "cine.nii.gz"))
    code, out = _train(case, case / "cine.nii.gz", case / "lbl.nii.gz")
    assert code == 1 and not out.exists()
    _assert_one_line_error(capsys, "cine.nii.gz", "4D")


def test_unreadable_file(case, capsys):
    (case / "broken.nii.gz").write_bytes(b"\x1f\x8b this is not a volume")
    code, out = _train(case, case / "broken.nii.gz", case / "lbl.nii.gz")
    assert code == 1 and not out.exists()
    _assert_one_line_error(capsys, "broken.nii.gz", "cannot be read")


def test_missing_file(case, capsys):
    code, out = _train(case, case / "img.nii.gz", case / "nowhere.nii.gz")
    assert code == 1 and not out.exists()
    _assert_one_line_error(capsys, "nowhere.nii.gz", "not found")


@pytest.mark.parametrize("where", ["under_a_file", "read_only_filesystem"])
def test_unwritable_output_folder(case, capsys, where):
    (case / "note.txt").write_text("a file")
    out = case / "note.txt" / "out" if where == "under_a_file" else "/proc/plcl-output"
    code, _ = _train(case, case / "img.nii.gz", case / "lbl.nii.gz", out=out)
    assert code == 1
    _assert_one_line_error(capsys, "note.txt" if where == "under_a_file" else "/proc")


def test_output_folder_that_would_overwrite_an_input_is_refused(case, capsys):
    (case / "predictions").mkdir()
    sitk.WriteImage(make_image(phantom()[0]), str(case / "predictions" / "x.nii.gz"))
    code = main(["train", "--labeled", str(case / "img.nii.gz"), str(case / "lbl.nii.gz"), "--unlabeled",
                 str(case / "predictions" / "x.nii.gz"), "--out", str(case), "--iterations", "1"])
    assert code == 1
    _assert_one_line_error(capsys, "x.nii.gz", "choose another --out")


def test_no_unannotated_volume_trains_supervised_with_a_warning(case, capsys):
    out = case / "out"
    code = main(["train", "--labeled", str(case / "img.nii.gz"), str(case / "lbl.nii.gz"), "--out", str(out),
                 "--iterations", "2", "--set", "patch_size=32", "--set", "levels=3"])
    assert code == 0
    assert "warning: no unannotated volume" in capsys.readouterr().err
    assert (out / "model.pt").is_file()
    assert json.loads((out / "summary.json").read_text())["volumes"] == []


def test_user_inputs_are_never_modified(case):
    before = {p.name: p.read_bytes() for p in case.iterdir() if p.is_file()}
    code, _ = _train(case, case / "img.nii.gz", case / "lbl.nii.gz")
    assert code == 0
    assert {p.name: p.read_bytes() for p in case.iterdir() if p.is_file()} == before
