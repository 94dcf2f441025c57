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
from PLCLSegmentationLib.engine.lab.cleanup_study import BY_AGREEMENT, MODELS, markdown, study
from PLCLSegmentationLib.engine.lab.synthetic import LABELS
from PLCLSegmentationLib.engine.method.modelfile import ModelInfo, save_model


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
    assert list(scored) == ["none", "each class", "the whole, then each class", MODELS]
    for way, name in (("none", "off"), ("each class", "legacy"), (MODELS, "legacy")):
        for c in classes:
            assert np.mean(scored[way]["dice"][c.name]) == pytest.approx(found[name][c.name], abs=1e-9), (way, c.name)
    table = markdown({"legacy.pt": scored})
    assert table.count("| legacy.pt |") == 4 and "lost" in table


def test_the_study_scores_the_organ_by_agreement_where_the_model_holds_its_annotations_neighbours(synthetic, tmp_path):
    info = _model_info(neighbour_shares=tuple(tuple(1.0 / len(LABELS) for _ in LABELS) for _ in LABELS))
    torch.manual_seed(0)
    save_model(tmp_path / "model.pt", info.build_network(), info)
    scored = study(str(tmp_path / "model.pt"), str(synthetic), "val")
    assert list(scored)[-1] == BY_AGREEMENT and all(scored[BY_AGREEMENT]["dice"].values())
    # The model's own way is plcl predict's, which chooses the organ by agreement with these shares.
    result = run_plcl("predict", "--model", str(tmp_path / "model.pt"), "--out", str(tmp_path / "predicted"),
                      "--estimate", "off", *read_dataset(synthetic).split_images("val"))
    assert result.returncode == 0, result.stderr
    found = evaluate(str(tmp_path / "predicted"), data=str(synthetic), split="val")["mean"]["dice"]
    for c in info.classes:
        assert np.mean(scored[MODELS]["dice"][c.name]) == pytest.approx(found[c.name], abs=1e-9), c.name
