"""Dice / HD95 on masks with known answers, and evaluation of prediction files against references."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from PLCLSegmentationLib.engine.errors import InputError
from PLCLSegmentationLib.engine.evaluation import metrics
from PLCLSegmentationLib.engine.files.volumes import ClassInfo, Grid, write_image, write_segmentation

ACDC_SPACING_KJI = (10.0, 1.5625, 1.5625)
DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
CLASSES = [
    ClassInfo(1, "right ventricle", (0.2, 0.4, 0.8)),
    ClassInfo(2, "myocardium", (0.8, 0.6, 0.2)),
    ClassInfo(3, "left ventricle", (0.9, 0.2, 0.2)),
]


def _brute_force_hd(a: np.ndarray, b: np.ndarray, spacing: tuple[float, ...], q: float = 95.0) -> float:
    """Reference implementation: all pairwise surface distances, no cropping, no distance transform."""

    def surface_points(mask: np.ndarray) -> np.ndarray:
        eroded = ndimage.binary_erosion(mask, border_value=0)  # the 6-neighbour cross, as MONAI
        return np.argwhere(mask & ~eroded) * np.asarray(spacing)

    pa, pb = surface_points(a), surface_points(b)
    d = np.linalg.norm(pa[:, None, :] - pb[None, :, :], axis=-1)
    return float(max(np.percentile(d.min(axis=1), q), np.percentile(d.min(axis=0), q)))


def _oblique_grid(size_ijk: tuple[int, int, int], spacing: tuple[float, float, float]) -> Grid:
    angle = np.deg2rad(30.0)
    rz = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    tilt = np.deg2rad(20.0)
    rx = np.array([[1, 0, 0], [0, np.cos(tilt), -np.sin(tilt)], [0, np.sin(tilt), np.cos(tilt)]])
    return Grid(size_ijk, spacing, (12.5, -40.0, 73.25), tuple((rz @ rx).ravel().tolist()))


def _heart_like(shape: tuple[int, int, int], shift: int = 0) -> np.ndarray:
    """A label map with the three classes: a disc, a ring around it, a crescent beside the ring."""
    k, j, i = np.indices(shape)
    cj, ci = shape[1] / 2, shape[2] / 2 + shift
    d = np.hypot(j - cj, i - ci)
    labels = np.zeros(shape, dtype=np.uint8)
    slab = (k >= 1) & (k < shape[0] - 1)
    labels[slab & (d < 10)] = 2
    labels[slab & (d < 6)] = 3
    labels[slab & (d >= 10) & (np.hypot(j - cj, i - ci - 8) < 13)] = 1
    return labels


# --- Dice ----------------------------------------------------------------------------------------


def test_identical_masks_give_dice_one_and_hd_zero() -> None:
    labels = _heart_like((6, 40, 40))
    assert metrics.dice_per_class(labels, labels, [1, 2, 3]) == {1: 1.0, 2: 1.0, 3: 1.0}
    assert metrics.hd95_per_class(labels, labels, [1, 2, 3], ACDC_SPACING_KJI) == {1: 0.0, 2: 0.0, 3: 0.0}


def test_dice_of_half_overlapping_cubes() -> None:
    pred = np.zeros((10, 10, 10), dtype=np.uint8)
    ref = np.zeros_like(pred)
    pred[2:6, 2:6, 2:6] = 1
    ref[2:6, 2:6, 4:8] = 1  # half of each cube overlaps the other
    assert metrics.dice_per_class(pred, ref, [1])[1] == pytest.approx(0.5)


def test_empty_structures() -> None:
    pred = np.zeros((4, 8, 8), dtype=np.uint8)
    ref = np.zeros_like(pred)
    ref[1:3, 2:5, 2:5] = 2
    dice = metrics.dice_per_class(pred, ref, [1, 2])
    hd = metrics.hd95_per_class(pred, ref, [1, 2], ACDC_SPACING_KJI)
    assert dice == {1: None, 2: 0.0}  # absent from both: undefined; missed: 0
    assert hd == {1: None, 2: None}  # no finite distance when either mask is empty
    assert metrics.dice_per_class(ref, pred, [2]) == {2: 0.0}


def test_shape_mismatch_is_an_error() -> None:
    with pytest.raises(ValueError):
        metrics.dice_per_class(np.zeros((2, 3, 4), np.uint8), np.zeros((2, 3, 5), np.uint8), [1])
    with pytest.raises(ValueError):
        metrics.hd95_per_class(np.zeros((2, 3, 4), np.uint8), np.zeros((2, 3, 4), np.uint8), [1], (1.0, 1.0))


# --- HD95 ----------------------------------------------------------------------------------------


def test_hd_of_a_slab_shifted_along_the_thick_axis_is_in_mm() -> None:
    """A one-slice square moved two slices: every surface voxel is exactly 2 x 10 mm from the other."""
    a = np.zeros((8, 20, 20), dtype=np.uint8)
    b = np.zeros_like(a)
    a[2, 5:15, 5:15] = 1
    b[4, 5:15, 5:15] = 1
    assert metrics.hd95_per_class(a, b, [1], ACDC_SPACING_KJI)[1] == pytest.approx(20.0)
    # the same shift in-plane is 2 x 1.5625 mm, and along i with columns one pixel wide
    c = np.zeros_like(a)
    d = np.zeros_like(a)
    c[1:7, 5:15, 6] = 1
    d[1:7, 5:15, 9] = 1
    assert metrics.hd95_per_class(c, d, [1], ACDC_SPACING_KJI)[1] == pytest.approx(3 * 1.5625)


def test_hd_of_a_shifted_cube_matches_brute_force() -> None:
    ref = np.zeros((12, 40, 40), dtype=np.uint8)
    ref[3:9, 10:26, 10:26] = 1
    pred = np.roll(ref, 2, axis=0)  # two slices = 20 mm
    expected = _brute_force_hd(pred == 1, ref == 1, ACDC_SPACING_KJI)
    assert metrics.hd95_per_class(pred, ref, [1], ACDC_SPACING_KJI)[1] == pytest.approx(expected)
    # the full Hausdorff distance (100th percentile) of this shift is exactly the shift
    assert metrics.hausdorff95(pred == 1, ref == 1, ACDC_SPACING_KJI, percentile=100) == pytest.approx(20.0)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_hd95_matches_brute_force_on_random_blobs(seed: int) -> None:
    """Irregular shapes, some touching the array border (outside counts as background), anisotropic."""
    rng = np.random.default_rng(seed)
    spacing = (7.5, 1.3, 0.9)

    def blob() -> np.ndarray:
        field = ndimage.gaussian_filter(rng.standard_normal((9, 30, 28)), sigma=(0.8, 3, 3))
        return field > 0.05

    a, b = blob(), blob()
    assert a.any() and b.any()
    expected = _brute_force_hd(a, b, spacing)
    assert metrics.hausdorff95(a, b, spacing) == pytest.approx(expected, rel=1e-9, abs=1e-9)
    # padding with background changes nothing (outside the array already counts as background)
    pad = ((3, 4), (10, 2), (0, 7))
    assert metrics.hausdorff95(np.pad(a, pad), np.pad(b, pad), spacing) == pytest.approx(expected)


def test_hd95_is_fast_on_a_large_anisotropic_volume() -> None:
    shape = (18, 512, 512)
    ref = _heart_like(shape)
    pred = np.roll(ref, 3, axis=2)
    pred[0, 0, 0] = 3  # a stray voxel in a corner: the joint box becomes the whole volume
    start = time.perf_counter()
    result = metrics.hd95_per_class(pred, ref, [1, 2, 3], ACDC_SPACING_KJI)
    elapsed = time.perf_counter() - start
    assert all(v is not None and v > 0 for v in result.values())
    assert elapsed < 6.0, f"hd95 on 512x512x18 took {elapsed:.2f} s for 3 classes"


# --- evaluating files ----------------------------------------------------------------------------


def _write_case(folder: Path, name: str, grid: Grid, ref: np.ndarray, pred: np.ndarray,
                pred_classes: list[ClassInfo]) -> tuple[Path, Path]:
    ref_path = folder / f"{name}_ref.nrrd"
    pred_path = folder / f"{name}.seg.nrrd"
    write_image(ref_path, ref, grid)
    write_segmentation(pred_path, pred, grid, pred_classes)
    return pred_path, ref_path


def test_evaluate_folder_on_oblique_seg_nrrd_and_label_maps(tmp_path: Path) -> None:
    shape = (8, 48, 44)
    grid = _oblique_grid((shape[2], shape[1], shape[0]), (1.5625, 1.5625, 10.0))
    ref = _heart_like(shape)
    pred_a = np.roll(ref, 2, axis=2)
    # case a: a .seg.nrrd whose segments are in another order, with other values: matched by name
    renumber = {1: 3, 2: 1, 3: 2}
    file_classes = [ClassInfo(renumber[c.value], c.name.upper(), c.color) for c in CLASSES]
    pred_a_file = np.zeros_like(pred_a)
    for value, new in renumber.items():
        pred_a_file[pred_a == value] = new
    pred_path_a, ref_path_a = _write_case(tmp_path, "a", grid, ref, pred_a_file, file_classes)
    # case b: a plain label map prediction (values are class values), perfect except myocardium missed
    pred_b = ref.copy()
    pred_b[pred_b == 2] = 0
    ref_path_b = tmp_path / "b_ref.nii.gz"
    sitk.WriteImage(grid.apply_to(sitk.GetImageFromArray(ref)), str(ref_path_b), useCompression=True)
    pred_path_b = tmp_path / "b_pred.nrrd"
    write_image(pred_path_b, pred_b, grid)

    preds = {"a": str(pred_path_a), "b": str(pred_path_b)}
    refs = {"a": str(ref_path_a), "b": str(ref_path_b), "c": "unused.nrrd"}
    report = metrics.evaluate_folder(preds, refs, CLASSES)
    json.dumps(report, allow_nan=False)  # JSON-able, no NaN
    spacing = ACDC_SPACING_KJI
    expected_dice = metrics.dice_per_class(pred_a, ref, [1, 2, 3])
    expected_hd = metrics.hd95_per_class(pred_a, ref, [1, 2, 3], spacing)
    case_a = report["cases"]["a"]
    for c in CLASSES:
        assert case_a["dice"][c.name] == pytest.approx(expected_dice[c.value])
        assert case_a["hd95_mm"][c.name] == pytest.approx(expected_hd[c.value])
        assert 0.0 < case_a["dice"][c.name] < 1.0
    assert case_a["mean_dice"] == pytest.approx(np.mean(list(expected_dice.values())))
    case_b = report["cases"]["b"]
    assert case_b["dice"] == {"right ventricle": 1.0, "myocardium": 0.0, "left ventricle": 1.0}
    assert case_b["hd95_mm"] == {"right ventricle": 0.0, "myocardium": None, "left ventricle": 0.0}
    assert case_b["mean_hd95_mm"] == 0.0
    mean = report["mean"]
    assert mean["dice"]["myocardium"] == pytest.approx(expected_dice[2] / 2)
    assert mean["hd95_mm"]["myocardium"] == pytest.approx(expected_hd[2])  # undefined values left out
    assert mean["cases_counted"]["hd95_mm"]["myocardium"] == 1
    assert mean["mean_dice"] == pytest.approx(np.mean(list(mean["dice"].values())))
    assert report["n_cases"] == 2
    assert report["missing_predictions"] == ["c"]

    table = metrics.format_table(report)
    lines = table.splitlines()
    assert "myocardium Dice" in lines[0] and "left ventricle HD95 mm" in lines[0]
    assert lines[2].startswith("| a ") and lines[3].startswith("| b ")
    assert lines[4].startswith("| mean (2 cases)")
    assert "n/a" in lines[3]
    assert len({len(line) for line in lines[:5]}) == 1  # fixed width
    assert "Not evaluated (no prediction): c" in table


def test_cropped_seg_nrrd_on_a_subgrid_is_placed_exactly(tmp_path: Path) -> None:
    """Slicer writes segmentations cropped to their extent: still on the reference's grid."""
    shape = (8, 48, 44)
    grid = _oblique_grid((shape[2], shape[1], shape[0]), (1.5625, 1.5625, 10.0))
    ref = _heart_like(shape)
    ref_path = tmp_path / "ref.nrrd"
    write_image(ref_path, ref, grid)
    crop = ndimage.find_objects((ref > 0).astype(np.uint8))[0]
    assert crop != tuple(slice(0, n) for n in shape)
    sub_origin = grid.ijk_to_lps() @ np.array([crop[2].start, crop[1].start, crop[0].start, 1.0])
    sub = Grid(ref[crop].shape[::-1], grid.spacing, tuple(sub_origin[:3].tolist()), grid.direction)
    pred_path = tmp_path / "pred.seg.nrrd"
    write_segmentation(pred_path, ref[crop], sub, CLASSES)
    report = metrics.evaluate_folder({"x": pred_path}, {"x": ref_path}, CLASSES)
    assert report["cases"]["x"]["dice"] == {c.name: 1.0 for c in CLASSES}
    assert report["mean"]["mean_hd95_mm"] == 0.0


def test_prediction_off_the_reference_grid_names_the_file(tmp_path: Path) -> None:
    shape = (6, 32, 32)
    grid = _oblique_grid((32, 32, 6), (1.5625, 1.5625, 10.0))
    other = Grid(grid.size, (1.5, 1.5625, 10.0), grid.origin, grid.direction)
    ref = _heart_like(shape)
    ref_path = tmp_path / "ref.nrrd"
    write_image(ref_path, ref, grid)
    pred_path = tmp_path / "case_7.seg.nrrd"
    write_segmentation(pred_path, ref, other, CLASSES)
    with pytest.raises(InputError) as caught:
        metrics.evaluate_folder({"x": str(pred_path)}, {"x": str(ref_path)}, CLASSES)
    assert caught.value.path == str(pred_path)
    assert "case_7.seg.nrrd" in str(caught.value) and "grid" in str(caught.value)

    label_path = tmp_path / "case_8.nrrd"
    write_image(label_path, ref, other)
    with pytest.raises(InputError, match="case_8.nrrd"):
        metrics.evaluate_folder({"x": str(label_path)}, {"x": str(ref_path)}, CLASSES)


def test_prediction_without_reference_or_matching_segments_names_the_file(tmp_path: Path) -> None:
    shape = (6, 32, 32)
    grid = _oblique_grid((32, 32, 6), (1.5625, 1.5625, 10.0))
    ref = _heart_like(shape)
    ref_path = tmp_path / "ref.nrrd"
    write_image(ref_path, ref, grid)
    pred_path = tmp_path / "p.seg.nrrd"
    other_names = [ClassInfo(c.value, f"organ {c.value}", c.color) for c in CLASSES]
    write_segmentation(pred_path, ref, grid, other_names)
    with pytest.raises(InputError, match="no reference"):
        metrics.evaluate_folder({"y": str(pred_path)}, {"x": str(ref_path)}, CLASSES)
    with pytest.raises(InputError, match="p.seg.nrrd.*matches a class"):
        metrics.evaluate_folder({"x": str(pred_path)}, {"x": str(ref_path)}, CLASSES)


def test_acdc_labels_against_themselves() -> None:
    dataset = DATA / "acdc"
    if not (dataset / "dataset.json").exists():
        pytest.skip(f"real ACDC data not found at {dataset} (see shared/data/README.md; not in the project)")
    names = json.loads((dataset / "dataset.json").read_text())["cases"]["val"][:2]
    paths = {n: str(dataset / "labels" / f"{n}.nii.gz") for n in names}
    report = metrics.evaluate_folder(paths, paths, CLASSES)
    for entry in report["cases"].values():
        assert entry["dice"] == {c.name: 1.0 for c in CLASSES}
        assert entry["hd95_mm"] == {c.name: 0.0 for c in CLASSES}


# --- HD95 pinned to MONAI ------------------------------------------------------------------------


def _monai_shapes() -> list[tuple[str, np.ndarray, np.ndarray, tuple[float, float, float]]]:
    """Analytic masks (no random numbers) on anisotropic grids: (name, a, b, spacing [k, j, i])."""
    k, j, i = np.meshgrid(np.arange(12), np.arange(40), np.arange(36), indexing="ij")
    sphere = ((k - 6) * 3.0) ** 2 + (j - 20.0) ** 2 + (i - 18.0) ** 2 < 11.0 ** 2
    ellipsoid = ((k - 5) * 3.0 / 1.3) ** 2 + ((j - 22.0) / 1.2) ** 2 + ((i - 16.0) / 0.8) ** 2 < 10.0 ** 2
    box = (k >= 2) & (k < 10) & (j >= 8) & (j < 30) & (i >= 10) & (i < 28)
    ring = (np.hypot(j - 20.0, i - 18.0) < 12) & (np.hypot(j - 20.0, i - 18.0) >= 6) & (k >= 1) & (k < 11)
    disc = (np.hypot(j - 19.0, i - 19.0) < 9.5) & (k >= 2) & (k < 11)
    return [("sphere_vs_ellipsoid", sphere, ellipsoid, (7.5, 1.25, 1.25)),
            ("box_vs_sphere", box, sphere, (3.0, 0.9, 1.2)),
            ("ring_vs_disc", ring, disc, (5.0, 1.0, 1.0)),
            ("ellipsoid_vs_box_isotropic", ellipsoid, box, (1.0, 1.0, 1.0))]


#: Computed once with MONAI 1.6.1 (torch 2.13.0 CPU) in a throwaway virtualenv, not a dependency:
#: monai.metrics.compute_hausdorff_distance(one_hot(a), one_hot(b), include_background=False,
#: percentile=95, spacing=list(spacing_kji)) on the masks of _monai_shapes. The engine's earlier
#: 26-neighbour surface gave 9.6606, 6.1774, 5.1816 and 6.0 (the first 36 % below MONAI).
MONAI_HD95 = {"sphere_vs_ellipsoid": 15.0, "box_vs_sphere": 6.177378177642822,
              "ring_vs_disc": 5.196152210235596, "ellipsoid_vs_box_isotropic": 6.0}


@pytest.mark.parametrize("name", list(MONAI_HD95))
def test_hd95_matches_monai(name):
    _, a, b, spacing = next(s for s in _monai_shapes() if s[0] == name)
    assert metrics.hausdorff95(a, b, spacing) == pytest.approx(MONAI_HD95[name], rel=1e-6)
    assert metrics.hausdorff95(b, a, spacing) == pytest.approx(MONAI_HD95[name], rel=1e-6)
