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
from PLCLSegmentationLib.engine.lab.cleanup_study import markdown, study
from PLCLSegmentationLib.engine.lab.synthetic import LABELS
from PLCLSegmentationLib.engine.method.modelfile import ModelInfo, save_model


def test_the_study_gives_what_predict_and_evaluate_give_for_the_same_clean_up(synthetic, tmp_path):
    classes = [ClassInfo(value, name, (1.0, 0.0, 0.0)) for value, name in sorted(LABELS.items()) if value > 0]
    info = ModelInfo(classes=classes, target_spacing_mm=1.2, patch_size=32, base_channels=4, levels=3,
                     embedding_dim=4, intensity_percentiles=(1.0, 99.0), inference_tile=32, largest_component=True)
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
