"""The SYNTHETIC beating-heart sequences: 4D files, known volumes, ejection fractions, a smooth cycle."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from PLCLSegmentationLib.engine.lab import synthetic_cine
from PLCLSegmentationLib.engine.lab.synthetic_cine import CAVITIES, contraction

FRAMES = 10


@pytest.fixture(scope="module")
def cine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return synthetic_cine.make_cine_dataset(tmp_path_factory.mktemp("cine") / "cine", n_sequences=3,
                                            n_frames=FRAMES, slices=5, pixels=64)


def _description(cine: Path) -> dict:
    return json.loads((cine / "sequences.json").read_text())


def test_description_says_synthetic_and_gives_roles(cine: Path) -> None:
    description = _description(cine)
    assert "SYNTHETIC" in description["name"] and description["synthetic"] is True
    assert "not medical" in description["description"]
    assert description["roles"] == {"annotated": ["cine_001"], "unannotated": ["cine_002"], "held_out": ["cine_003"]}
    assert sorted(description["sequences"]) == ["cine_001", "cine_002", "cine_003"]
    assert not [p for p in cine.rglob(".*")], "temporary files left behind"


def test_frames_share_one_acdc_like_grid_in_a_4d_nifti(cine: Path) -> None:
    description = _description(cine)
    thick_axes = set()
    for entry in description["sequences"].values():
        image = sitk.ReadImage(str(cine / entry["image"]))
        labels = sitk.ReadImage(str(cine / entry["label"]))
        assert image.GetDimension() == 4 and labels.GetDimension() == 4
        assert image.GetSize()[3] == FRAMES == entry["frames"] and labels.GetSize() == image.GetSize()
        assert image.GetPixelID() == sitk.sitkInt16 and labels.GetPixelID() == sitk.sitkUInt8
        spacing = np.asarray(image.GetSpacing()[:3])
        thick = int(np.argmax(spacing))
        thick_axes.add(thick)
        assert spacing[thick] == pytest.approx(10.0)
        assert all(1.4 <= s <= 1.6 for a, s in enumerate(spacing) if a != thick)
        assert image.GetSpacing()[3] == pytest.approx(entry["time_step_s"], rel=1e-5)
        assert 0.8 / FRAMES <= entry["time_step_s"] <= 1.0 / FRAMES
        direction = np.asarray(image.GetDirection()).reshape(4, 4)
        assert np.allclose(direction[3], [0, 0, 0, 1]) and np.abs(direction[:3, :3]).max() < 0.99  # oblique
        assert np.allclose(labels.GetDirection(), image.GetDirection()) and labels.GetOrigin() == image.GetOrigin()
        assert sorted(image.GetSize()[:3]) == [5, 64, 64] and entry["size"] == list(image.GetSize()[:3])
    assert thick_axes == {0, 2}  # the second sequence is stored with its slice axis first


def test_known_volumes_are_the_label_voxels_times_the_voxel_volume(cine: Path) -> None:
    for entry in _description(cine)["sequences"].values():
        labels = sitk.GetArrayFromImage(sitk.ReadImage(str(cine / entry["label"])))  # [t, k, j, i]
        voxel_ml = math.prod(entry["spacing_mm"]) / 1000.0
        assert entry["voxel_volume_ml"] == pytest.approx(voxel_ml)
        for value, name in ((1, "right ventricle"), (2, "myocardium"), (3, "left ventricle")):
            counts = (labels == value).reshape(FRAMES, -1).sum(axis=1)
            assert entry["volumes_ml"][name] == pytest.approx((counts * voxel_ml).tolist(), rel=1e-9)
            assert counts.min() > 0


def test_ejection_fractions_are_as_configured_and_the_myocardium_keeps_its_volume(cine: Path) -> None:
    for entry in _description(cine)["sequences"].values():
        configured, known, volumes = entry["configured_ejection_fraction"], entry["ejection_fraction"], \
            entry["volumes_ml"]
        assert 55.0 <= configured["left ventricle"] <= 62.0 and 45.0 <= configured["right ventricle"] <= 52.0
        for name in CAVITIES:
            assert known[name] == pytest.approx(100.0 * (max(volumes[name]) - min(volumes[name])) / max(volumes[name]))
            assert abs(known[name] - configured[name]) < 1.0, (name, known[name], configured[name])
        lv = volumes["left ventricle"]
        assert lv.index(max(lv)) == entry["end_diastole_frame"] and lv.index(min(lv)) == entry["end_systole_frame"]
        myocardium = np.asarray(volumes["myocardium"])
        assert myocardium.max() / myocardium.min() < 1.05


def test_volumes_follow_the_smooth_cycle(cine: Path) -> None:
    for entry in _description(cine)["sequences"].values():
        ed, es = entry["end_diastole_frame"], entry["end_systole_frame"]
        profile = contraction(FRAMES, (es - ed) % FRAMES, ed)
        for name in CAVITIES:
            curve = np.asarray(entry["volumes_ml"][name])
            expected = curve.max() * (1.0 - entry["configured_ejection_fraction"][name] / 100.0 * profile)
            assert np.abs(curve - expected).max() < 0.015 * curve.max(), name


def test_contraction_is_a_smooth_periodic_cycle() -> None:
    for frames, systole, offset in ((30, 11, 0), (30, 9, 17), (12, 4, 5)):
        c = contraction(frames, systole, offset)
        assert c[offset] == 0.0 and c[(offset + systole) % frames] == pytest.approx(1.0)
        assert c.min() == 0.0 and c.max() == pytest.approx(1.0) and np.argmin(c) == offset
        shortest = min(systole, frames - systole)
        step = np.diff(c, append=c[:1])  # around the cycle, the last frame back to the first included
        assert np.abs(step).max() <= math.pi / (2 * shortest) + 1e-9  # no jump, also at the wrap
        bend = np.diff(step, append=step[:1])
        assert np.abs(bend).max() <= (math.pi / shortest) ** 2 / 2 + 1e-9  # no kink: slopes continue
    with pytest.raises(ValueError):
        contraction(10, 10)


def test_sequences_follow_the_seed_not_their_number(tmp_path: Path, cine: Path) -> None:
    one = synthetic_cine.make_cine_dataset(tmp_path / "one", n_sequences=1, n_frames=FRAMES, slices=5, pixels=64)
    assert _description(one)["roles"] == {"annotated": ["cine_001"], "unannotated": [], "held_out": []}
    for kind in ("images", "labels"):
        a = sitk.ReadImage(str(one / kind / "cine_001.nii.gz"))
        b = sitk.ReadImage(str(cine / kind / "cine_001.nii.gz"))
        assert np.array_equal(sitk.GetArrayFromImage(a), sitk.GetArrayFromImage(b))
        assert a.GetOrigin() == b.GetOrigin() and a.GetDirection() == b.GetDirection()
    other = synthetic_cine.make_sequence(1, 0, n_frames=FRAMES, slices=5, pixels=64)
    assert not np.array_equal(other.labels, sitk.GetArrayFromImage(sitk.ReadImage(str(cine / "labels" /
                                                                                         "cine_001.nii.gz"))))
    with pytest.raises(ValueError):
        synthetic_cine.make_cine_dataset(tmp_path / "none", n_sequences=0)
    with pytest.raises(ValueError):
        synthetic_cine.make_sequence(0, 0, n_frames=3)
