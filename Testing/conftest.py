"""Shared fixtures: the real ACDC data (skipped where absent) and small oblique test volumes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "PLCLSegmentation"))  # the package without installing it
DATA = REPO.parent / "shared" / "data"
ACDC = DATA / "acdc"


@pytest.fixture(scope="session")
def acdc() -> Path:
    if not (ACDC / "dataset.json").is_file():
        pytest.skip(f"real data not found at {ACDC} (the ../shared/data folder beside the project)")
    return ACDC


def acdc_case(case: str) -> tuple[str, str]:
    return str(ACDC / "images" / f"{case}.nii.gz"), str(ACDC / "labels" / f"{case}.nii.gz")


def rotation(ax: float, ay: float, az: float) -> np.ndarray:
    cx, sx, cy, sy, cz, sz = np.cos(ax), np.sin(ax), np.cos(ay), np.sin(ay), np.cos(az), np.sin(az)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


def make_image(array_kji: np.ndarray, spacing=(1.2, 0.9, 7.5), origin=(-12.5, 40.0, 3.25),
               direction: np.ndarray | None = None) -> sitk.Image:
    image = sitk.GetImageFromArray(array_kji)
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    image.SetDirection(tuple((np.eye(3) if direction is None else direction).ravel()))
    return image


def phantom(shape_kji=(7, 48, 40), seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A bright disc (class 2) inside a ring (class 1) on noise: (image, labels) in [k, j, i]."""
    rng = np.random.default_rng(seed)
    k, j, i = np.meshgrid(*[np.arange(n) for n in shape_kji], indexing="ij")
    r = np.hypot(j - shape_kji[1] / 2, i - shape_kji[2] / 2)
    labels = np.zeros(shape_kji, np.uint8)
    labels[r < 12] = 1
    labels[r < 7] = 2
    image = (labels.astype(np.float64) * 400 + rng.normal(100, 20, shape_kji)).astype(np.int16)
    return image, labels


def run_plcl(*args: str, timeout: float = 600, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run the plcl command in a child process, as a user or the Slicer module would."""
    environment = {**os.environ, "PYTHONPATH": str(REPO / "PLCLSegmentation"), **(env or {})}
    return subprocess.run([sys.executable, "-m", "PLCLSegmentationLib.engine", *args], capture_output=True,
                          text=True, timeout=timeout, env=environment)


def events(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines() if line.strip()]
