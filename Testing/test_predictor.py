"""The predictor: a model file loaded once, independent of the training code."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import REPO, make_image, phantom

from PLCLSegmentationLib.engine.files.volumes import ClassInfo, Grid, Volume
from PLCLSegmentationLib.engine.method.modelfile import ModelInfo, save_model
from PLCLSegmentationLib.engine.method.predictor import Predictor


def test_prediction_imports_no_training_code():
    """Prediction may not borrow from training: a fresh interpreter that imports the predictor and
    the prediction run has no training module loaded."""
    training = ("train", "batches", "augment", "losses", "consistency")
    code = ("import sys; import PLCLSegmentationLib.engine.method.predictor; "
            "import PLCLSegmentationLib.engine.run.prediction; "
            f"bad = [m for m in {training!r} if 'PLCLSegmentationLib.engine.method.' + m in sys.modules]; "
            "print(bad); sys.exit(bool(bad))")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO / "PLCLSegmentation", capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.fixture(scope="module")
def model_file(tmp_path_factory) -> str:
    info = ModelInfo(classes=[ClassInfo(3, "ring", (1.0, 0.0, 0.0)), ClassInfo(7, "disc", (0.0, 0.0, 1.0))],
                     target_spacing_mm=1.2, patch_size=32, base_channels=4, levels=3, embedding_dim=4,
                     intensity_percentiles=(1.0, 99.0), inference_tile=32, largest_component=True)
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("model") / "model.pt"
    save_model(path, info.build_network(), info)
    return str(path)


def _volume(name: str, seed: int) -> Volume:
    image = make_image(phantom(seed=seed)[0].astype(np.float32))
    return Volume(name, f"{name}.nrrd", phantom(seed=seed)[0].astype(np.float32), Grid.of(image))


def test_the_predictor_knows_its_model_and_labels_a_volume_on_its_grid(model_file):
    predictor = Predictor.load(model_file, torch.device("cpu"), precision="fp32")
    assert [c.value for c in predictor.classes] == [3, 7] and predictor.num_classes == 3
    assert predictor.spacing_mm == pytest.approx(1.2) and predictor.precision == "fp32"
    volume = _volume("a", 0)
    prepared, has_contrast = predictor.prepare(volume)
    assert has_contrast
    result = predictor.predict(prepared)
    assert result.labels.shape == result.uncertainty.shape == volume.array.shape
    assert set(np.unique(result.labels).tolist()) <= {0, 3, 7}
    assert 0.0 <= result.uncertainty.min() <= result.uncertainty.max() <= 1.0 and 0.0 <= result.score <= 1.0
    assert result.voxels == {"ring": int((result.labels == 3).sum()), "disc": int((result.labels == 7).sum())}


def test_a_group_in_one_pass_gives_each_volume_its_own_result(model_file):
    predictor = Predictor.load(model_file, torch.device("cpu"), precision="fp32")
    prepared = [predictor.prepare(_volume(f"v{i}", i))[0] for i in range(3)]
    together = list(predictor.predict_group(prepared))
    assert len(together) == 3
    for p, result in zip(prepared, together):
        alone = predictor.predict(p)
        np.testing.assert_array_equal(result.labels, alone.labels)
        np.testing.assert_allclose(result.uncertainty, alone.uncertainty, atol=1e-4)


class _CountingPredictor(Predictor):
    """The real predictor, counting its network passes (each one a call of ``probabilities``)."""

    passes = 0

    def probabilities(self, images: torch.Tensor) -> torch.Tensor:
        self.passes += 1
        return super().probabilities(images)


def test_the_estimate_costs_one_pass_per_mirrored_copy_and_never_changes_the_segmentation(model_file):
    """--estimate full, fast, off: 4, 2 and 1 network passes a volume; the same labels and uncertainty;
    estimates from three copies, one copy, or none (every estimated_dice None, the structures ordered by
    uncertainty)."""
    results = {}
    for estimate, passes in (("full", 4), ("fast", 2), ("off", 1)):
        predictor = _CountingPredictor.load(model_file, torch.device("cpu"), precision="fp32", estimate=estimate)
        results[estimate] = predictor.predict(predictor.prepare(_volume("a", 0))[0])
        assert predictor.passes == passes, estimate
        assert ("three mirrored" in predictor.quality_measure) == (estimate == "full")
        assert ("one mirrored" in predictor.quality_measure) == (estimate == "fast")
    for estimate in ("fast", "off"):
        np.testing.assert_array_equal(results[estimate].labels, results["full"].labels)
        np.testing.assert_array_equal(results[estimate].uncertainty, results["full"].uncertainty)
    found = [s for s in results["full"].quality.structures if results["full"].voxels[s["name"]]]
    assert found and all(s["estimated_dice"] is not None for s in found)
    off = results["off"].quality.structures
    assert all(s["estimated_dice"] is None for s in off)
    assert [s["uncertainty"] for s in off] == sorted((s["uncertainty"] for s in off), reverse=True)
