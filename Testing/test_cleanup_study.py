"""The clean-up study (lab) scores the clean-ups as the product's own predict and evaluate do."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from conftest import run_plcl

from PLCLSegmentationLib.engine.evaluation.report import evaluate
from PLCLSegmentationLib.engine.files.dataset import read_dataset
from PLCLSegmentationLib.engine.files.volumes import ClassInfo
from PLCLSegmentationLib.engine.lab.cleanup_study import BY_AGREEMENT, markdown, organ_by_agreement, study
from PLCLSegmentationLib.engine.lab.synthetic import LABELS
from PLCLSegmentationLib.engine.method.components import keep_largest_components
from PLCLSegmentationLib.engine.method.modelfile import ModelInfo, save_model
from PLCLSegmentationLib.engine.method.quality import neighbour_counts, neighbour_shares


def _model_info(**fields) -> ModelInfo:
    """A small untrained model of the synthetic dataset's classes."""
    classes = [ClassInfo(value, name, (1.0, 0.0, 0.0)) for value, name in sorted(LABELS.items()) if value > 0]
    return ModelInfo(classes=classes, target_spacing_mm=1.2, patch_size=32, base_channels=4, levels=3,
                     embedding_dim=4, intensity_percentiles=(1.0, 99.0), inference_tile=32, largest_component=True,
                     **fields)


def test_the_study_gives_what_predict_and_evaluate_give_for_the_same_clean_up(synthetic, tmp_path):
    info = _model_info()
    classes = info.classes
    torch.manual_seed(0)
    network = info.build_network()
    found = {}
    for name, variant in (("legacy", info), ("off", dataclasses.replace(info, largest_component=False))):
        save_model(tmp_path / f"{name}.pt", network, variant)
        result = run_plcl("predict", "--model", str(tmp_path / f"{name}.pt"), "--out", str(tmp_path / name),
                          "--estimate", "off", *read_dataset(synthetic).split_images("val"))
        assert result.returncode == 0, result.stderr
        found[name] = evaluate(str(tmp_path / name), data=str(synthetic), split="val")["mean"]["dice"]
    scored = study(str(tmp_path / "legacy.pt"), str(synthetic), "val")
    assert list(scored) == ["none", "each class", "the whole, then each class", "the model's (its annotations)"]
    for way, name in (("none", "off"), ("each class", "legacy"), ("the model's (its annotations)", "legacy")):
        for c in classes:
            assert np.mean(scored[way]["dice"][c.name]) == pytest.approx(found[name][c.name], abs=1e-9), (way, c.name)
    table = markdown({"legacy.pt": scored})
    assert table.count("| legacy.pt |") == 4 and "lost" in table


def _organ(labels: np.ndarray, top: int, left: int, slices: slice) -> None:
    """A wall (2) around a cavity (3), a chamber (1) beside the wall: 64 + 36 + 40 voxels a slice."""
    labels[slices, top:top + 10, left:left + 10] = 2
    labels[slices, top + 2:top + 8, left + 2:left + 8] = 3
    labels[slices, top:top + 10, left + 10:left + 14] = 1


def test_the_lead_keeps_the_piece_whose_structures_border_as_annotated_over_a_larger_stray_one():
    annotated = np.zeros((6, 40, 60), np.uint8)
    _organ(annotated, 5, 5, slice(0, 6))
    shares = neighbour_shares(neighbour_counts(annotated, 4))
    labels = np.zeros((6, 40, 60), np.uint8)
    _organ(labels, 5, 5, slice(0, 3))  # the organ found in half its slices: 420 voxels
    labels[3:6, 25:37, 30:44] = 1  # a stray piece apart from it, larger (648 voxels), its structures side by side
    labels[3:6, 25:37, 44:48] = 3
    assert keep_largest_components(labels, (True,) * 4)[0].max() == 0  # size alone keeps the stray piece
    kept = organ_by_agreement(labels, shares)
    np.testing.assert_array_equal(kept[:3], labels[:3])
    assert not kept[3:].any() and (labels[3:6, 25:37, 44:48] == 3).all()  # the input is not changed
    labels[3:6, 25:37, 30:48] = 0  # without the stray piece the organ is kept whole
    np.testing.assert_array_equal(organ_by_agreement(labels, shares), labels)


def test_the_study_scores_the_lead_where_the_model_holds_its_annotations_neighbours(synthetic, tmp_path):
    info = _model_info(neighbour_shares=tuple(tuple(1.0 / len(LABELS) for _ in LABELS) for _ in LABELS))
    torch.manual_seed(0)
    save_model(tmp_path / "model.pt", info.build_network(), info)
    scored = study(str(tmp_path / "model.pt"), str(synthetic), "val")
    assert list(scored)[-1] == BY_AGREEMENT and all(scored[BY_AGREEMENT]["dice"].values())
