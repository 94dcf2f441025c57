"""What runs the network: torch, or an exported copy in ONNX Runtime or OpenVINO on the CPU. Each
installed backend labels volumes as torch fp32 does (Dice >= 0.999 per volume); one asked for where
it is not installed, or on a device it cannot use, is one line and exit 2."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from conftest import REPO, events, make_image, phantom, run_plcl

from PLCLSegmentationLib.engine.errors import ConfigError
from PLCLSegmentationLib.engine.evaluation.metrics import dice_per_class
from PLCLSegmentationLib.engine.files.volumes import ClassInfo, Grid, Volume
from PLCLSegmentationLib.engine.method.modelfile import ModelInfo, save_model
from PLCLSegmentationLib.engine.method.predictor import Predictor
from PLCLSegmentationLib.engine.protocol import EXIT_USAGE
from PLCLSegmentationLib.engine.runtime import BACKEND_PACKAGES, missing_modules, resolve_backend

EXPORTED = list(BACKEND_PACKAGES)


def _needs(backend: str) -> None:
    missing = missing_modules(backend)
    if missing:
        pytest.skip(f"{missing[0]} is not installed (pip install '.[{BACKEND_PACKAGES[backend][1]}]')")


@pytest.fixture(scope="module")
def model_file(tmp_path_factory) -> str:
    """A tiny network with weights trained for a few steps on the phantom (a confident, realistic
    output rather than an untrained network's near-ties) and non-trivial batch-norm statistics."""
    info = ModelInfo(classes=[ClassInfo(1, "ring", (1.0, 0.0, 0.0)), ClassInfo(2, "disc", (0.0, 0.0, 1.0))],
                     target_spacing_mm=1.2, patch_size=32, base_channels=4, levels=3, embedding_dim=4,
                     intensity_percentiles=(1.0, 99.0), inference_tile=32)
    torch.manual_seed(0)
    network = info.build_network()
    image, labels = phantom(shape_kji=(6, 40, 40), seed=5)
    x = torch.from_numpy((image.astype(np.float32) - 100) / 500)[:, None]
    y = torch.from_numpy(labels).long()
    optimiser = torch.optim.Adam(network.parameters(), lr=1e-2)
    network.train()
    for _ in range(30):
        optimiser.zero_grad()
        torch.nn.functional.cross_entropy(network(x), y).backward()
        optimiser.step()
    path = tmp_path_factory.mktemp("model") / "model.pt"
    save_model(path, network, info)
    return str(path)


def _volumes() -> list[Volume]:
    found = []
    for seed, shape in ((0, (7, 48, 40)), (1, (5, 64, 72))):  # the second larger than the tile: sliding windows
        array = phantom(shape_kji=shape, seed=seed)[0].astype(np.float32)
        found.append(Volume(f"v{seed}", f"v{seed}.nrrd", array, Grid.of(make_image(array))))
    return found


def _volume_dice(a: np.ndarray, b: np.ndarray) -> float:
    scores = [1.0 if d is None else d for d in dice_per_class(a, b, [1, 2]).values()]
    return float(np.mean(scores))


@pytest.mark.parametrize("backend", EXPORTED)
def test_each_installed_backend_labels_volumes_as_torch_fp32_does(model_file, backend):
    _needs(backend)
    cpu = torch.device("cpu")
    reference = Predictor.load(model_file, cpu, precision="fp32", backend="torch")
    exported = Predictor.load(model_file, cpu, precision="fp32", backend=backend)
    assert (exported.backend, exported.precision) == (backend, "fp32")
    for volume in _volumes():
        prepared = reference.prepare(volume)[0]
        expected, got = reference.predict(prepared), exported.predict(prepared)
        assert got.labels.shape == volume.array.shape
        assert (expected.labels > 0).sum() > 50  # the model finds the structures: a comparison with content
        assert _volume_dice(got.labels, expected.labels) >= 0.999
        np.testing.assert_allclose(exported.probabilities(prepared.images), reference.probabilities(prepared.images),
                                   atol=1e-3)


def test_torch_in_float32_folds_batch_norms_into_the_convolutions_without_changing_the_labels(model_file):
    cpu = torch.device("cpu")
    folded = Predictor.load(model_file, cpu, precision="fp32", backend="torch")
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.network.modules())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.model.modules())  # the model itself is untouched
    as_trained = Predictor.load(model_file, cpu, precision="fp32", backend="torch")
    as_trained.network = as_trained.model
    for volume in _volumes():
        prepared = folded.prepare(volume)[0]
        np.testing.assert_allclose(folded.probabilities(prepared.images), as_trained.probabilities(prepared.images),
                                   atol=1e-4)
        np.testing.assert_array_equal(folded.predict(prepared).labels, as_trained.predict(prepared).labels)


def test_auto_is_torch_off_the_cpu_and_exported_backends_refuse_other_devices():
    assert resolve_backend("auto", torch.device("cuda")) == "torch"
    assert resolve_backend("auto", torch.device("mps")) == "torch"
    assert resolve_backend("torch", torch.device("mps")) == "torch"
    for backend in EXPORTED:
        if missing_modules(backend):
            continue  # not installed: the other test's case
        with pytest.raises(ConfigError, match=f"--backend {backend} runs on the CPU only"):
            resolve_backend(backend, torch.device("cuda"))


#: A child interpreter in which one backend's package cannot be imported, as where it is not
#: installed, running plcl predict with the arguments that follow.
_WITHOUT = """
import sys
class Absent:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] == sys.argv[1]:
            raise ModuleNotFoundError(name)
sys.meta_path.insert(0, Absent())
from PLCLSegmentationLib.engine.cli import main
sys.exit(main(sys.argv[2:]))
"""


@pytest.mark.parametrize("backend", EXPORTED)
def test_a_backend_that_is_not_installed_is_one_line_and_exit_2_before_anything_is_written(
        model_file, backend, tmp_path):
    image = tmp_path / "v.nrrd"
    sitk.WriteImage(make_image(phantom()[0]), str(image))
    out = tmp_path / "out"
    module = BACKEND_PACKAGES[backend][0][0]
    result = subprocess.run([sys.executable, "-c", _WITHOUT, module, "predict", "--model", model_file, "--out",
                             str(out), "--backend", backend, "--events", "jsonl", str(image)],
                            cwd=REPO / "PLCLSegmentation", capture_output=True, text=True, timeout=300)
    assert result.returncode == EXIT_USAGE, result.stdout + result.stderr
    errors = [e for e in events(result.stdout) if e["event"] == "error"]
    assert len(errors) == 1 and f"the {module} package is not installed" in errors[0]["message"]
    assert "\n" not in errors[0]["message"] and "Traceback" not in result.stderr
    assert not out.exists()


def test_predict_names_its_backend_and_precision_in_the_start_event_and_summary(model_file, tmp_path):
    image = tmp_path / "v.nrrd"
    sitk.WriteImage(make_image(phantom()[0]), str(image))
    result = run_plcl("predict", "--model", model_file, "--out", str(tmp_path / "out"), "--backend", "torch",
                      "--precision", "fp32", "--device", "cpu", "--events", "jsonl", str(image))
    assert result.returncode == 0, result.stdout + result.stderr
    start = next(e for e in events(result.stdout) if e["event"] == "start")
    assert (start["backend"], start["precision"]) == ("torch", "fp32")
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert (summary["backend"], summary["precision"]) == ("torch", "fp32")


def test_predict_without_the_estimate_says_so_and_orders_the_review_by_uncertainty(model_file, tmp_path):
    image = tmp_path / "v.nrrd"
    sitk.WriteImage(make_image(phantom()[0]), str(image))
    result = run_plcl("predict", "--model", model_file, "--out", str(tmp_path / "out"), "--estimate", "off",
                      "--device", "cpu", str(image))
    assert result.returncode == 0, result.stdout + result.stderr
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["estimate"] == "off" and "not computed" in summary["quality_measure"]
    assert all(s["estimated_dice"] is None for v in summary["volumes"] for s in v["structures"])
    assert "most uncertain first" in result.stderr
