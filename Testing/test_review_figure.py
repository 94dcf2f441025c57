"""The review figure (lab/review_figure.py): it shows the volume the review table puts first, at its least
certain slice, and draws a README-sized PNG from a predict-like folder (SYNTHETIC phantoms, no training)."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
from conftest import make_image, phantom

from PLCLSegmentationLib.engine.files.volumes import ClassInfo, Grid, read_volume, write_image, write_segmentation
from PLCLSegmentationLib.engine.lab import review_figure
from PLCLSegmentationLib.engine.method.preprocess import slice_layout
from PLCLSegmentationLib.engine.run.summary import write_json

CLASSES = [ClassInfo(1, "Ring", (0.9, 0.6, 0.2)), ClassInfo(2, "Disc", (0.2, 0.7, 0.9))]


def _structures(ring: float | None, disc: float | None) -> list[dict]:
    items = [{"name": "Ring", "value": 1, "estimated_dice": ring, "uncertainty": 0.2},
             {"name": "Disc", "value": 2, "estimated_dice": disc, "uncertainty": 0.1}]
    return sorted(items, key=lambda s: (s["estimated_dice"] is None, s["estimated_dice"] or 0.0))


def _slices(*indices: int) -> list[dict]:
    return [{"index": index, "uncertainty": 0.5 - 0.1 * place, "uncertain_voxels": 40.0 - place,
             "structure": "Ring", "structures": {"Ring": 0.5 - 0.1 * place, "Disc": 0.1}}
            for place, index in enumerate(indices)]


def _predict_folder(root: Path) -> Path:
    """A folder as plcl predict leaves it: three SYNTHETIC volumes, listed least certain first (summary's
    order); the second of lowest estimated Dice, its least certain slice 4."""
    root.mkdir()
    for sub in ("images", "predictions", "uncertainty"):
        (root / sub).mkdir()
    plan = [("synthetic_a", 0.30, _structures(0.80, 0.90), _slices(2, 3)),
            ("synthetic_b", 0.20, _structures(0.55, 0.85), _slices(4, 1, 5)),
            ("synthetic_c", 0.10, _structures(0.90, 0.70), _slices(3))]
    entries = []
    for seed, (name, score, structures, slices) in enumerate(plan):
        image, labels = phantom(seed=seed)
        grid = Grid.of(make_image(image))
        entropy = np.zeros(labels.shape, np.float32)
        entropy[slices[0]["index"]][labels[slices[0]["index"]] == 1] = 0.6
        paths = {"image": root / "images" / f"{name}.nrrd", "segmentation": root / "predictions" / f"{name}.seg.nrrd",
                 "uncertainty": root / "uncertainty" / f"{name}.nrrd"}
        write_image(paths["image"], image, grid)
        write_segmentation(paths["segmentation"], labels, grid, CLASSES)
        write_image(paths["uncertainty"], entropy, grid)
        entries.append({"name": name, **{k: str(v) for k, v in paths.items()}, "uncertainty_score": score,
                        "voxels": {}, "seconds": 0.1, "files": {"seg.nrrd": [str(paths["segmentation"])]},
                        "slice_axis": "k", "structures": structures, "slices": slices})
    write_json(root / "summary.json", {"command": "predict", "classes": [c.to_dict() for c in CLASSES],
                                       "estimate": "full", "volumes": entries})
    return root


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_choice_is_the_lowest_estimated_dice_at_its_least_certain_slice(tmp_path):
    summary = review_figure.read_summary(_predict_folder(tmp_path / "predict"))
    entry, item = review_figure.review_choice(summary)
    assert (entry["name"], item["index"]) == ("synthetic_b", 4)
    # without estimates (--estimate off) the table orders by uncertainty, as the module's does
    summary["estimate"] = "off"
    entry, item = review_figure.review_choice(summary)
    assert (entry["name"], item["index"]) == ("synthetic_a", 2)


def test_figure_is_a_readme_sized_png(tmp_path):
    folder = _predict_folder(tmp_path / "predict")
    before = {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    out = tmp_path / "review.png"
    assert review_figure.main([str(folder), str(out), "--volumes", "3"]) == 0
    assert _png_size(out) == review_figure.FIGURE_PX
    assert out.stat().st_size < 200_000
    assert {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()} == before  # inputs only read


def test_shown_slice_is_the_file_slice_when_the_stack_runs_backwards(tmp_path):
    values = np.broadcast_to(np.arange(7, dtype=np.int16)[:, None, None], (7, 12, 10)).copy()
    path = tmp_path / "backwards.nrrd"
    write_image(path, values, Grid.of(make_image(values, direction=np.diag([1.0, 1.0, -1.0]))))
    volume = read_volume(path)
    assert slice_layout(volume.grid).flips[0]  # the display stack runs against the file's k
    for index in (0, 4, 6):
        picture, _, _ = review_figure.shown_slice(volume, None, "k", index)
        assert np.all(picture == index)


def test_missing_summary_is_one_line_naming_it(tmp_path, capsys):
    out = tmp_path / "review.png"
    assert review_figure.main([str(tmp_path), str(out)]) == 1
    error = capsys.readouterr().err.strip()
    assert "\n" not in error and str(tmp_path / "summary.json") in error
    assert not out.exists()
