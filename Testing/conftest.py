"""Shared fixtures: a SYNTHETIC dataset (always there), the real ACDC data (skipped where absent) and
small oblique test volumes."""

from __future__ import annotations

import json
import locale
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


@pytest.fixture(autouse=True)
def _the_locale_is_left_as_found():
    """A library that switches the process to the C locale (ITK's DICOM writer does) would make every
    later test read and write text as ASCII: name the test that did it, here."""
    before = locale.getpreferredencoding(False)
    yield
    assert locale.getpreferredencoding(False) == before, "this test left the process in another locale"


@pytest.fixture(scope="session")
def acdc() -> Path:
    if not (ACDC / "dataset.json").is_file():
        pytest.skip(f"real data not found at {ACDC} (the ../shared/data folder beside the project)")
    return ACDC


def acdc_case(case: str) -> tuple[str, str]:
    return str(ACDC / "images" / f"{case}.nii.gz"), str(ACDC / "labels" / f"{case}.nii.gz")


@pytest.fixture(scope="session")
def synthetic(tmp_path_factory) -> Path:
    """A dataset folder of six SYNTHETIC phantoms (the project's generator; oblique, every second case
    stored with permuted axes; train synthetic_001-004, val 005-006) for the suites whose subject is
    the command line or the contract, not accuracy: they run in a clone without the real data."""
    from PLCLSegmentationLib.engine.lab.synthetic import make_synthetic_dataset

    return make_synthetic_dataset(tmp_path_factory.mktemp("synthetic"), n_cases=6, seed=0)


def case_of(data: Path, case: str) -> tuple[str, str]:
    """(image, label) of a case of a dataset folder."""
    return str(data / "images" / f"{case}.nii.gz"), str(data / "labels" / f"{case}.nii.gz")


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


def write_seq_nrrd(path, frames_tkji: np.ndarray, ijk_to_lps: np.ndarray, times=None, unit: str = "ms",
                   list_first: bool = False, time_direction=None) -> None:
    """A 4D NRRD as Slicer's Sequences module writes a volume sequence (list axis last, gzip; with
    ``list_first`` as older writers did). ``time_direction``: a space direction for the list axis
    instead of ``none`` (frames that move in space)."""
    import gzip

    count = frames_tkji.shape[0]
    times = list(range(count)) if times is None else list(times)
    vectors = ["(" + ",".join(repr(float(v)) for v in ijk_to_lps[:3, a]) + ")" for a in range(3)]
    list_vector = "none" if time_direction is None else "(" + ",".join(repr(float(v)) for v in time_direction) + ")"
    list_kind = "list" if time_direction is None else "domain"
    axis = 0 if list_first else 3
    sizes = list(frames_tkji.shape[:0:-1])
    if list_first:
        data = np.ascontiguousarray(np.moveaxis(frames_tkji, 0, -1))  # frames fastest
        sizes, vectors, kinds = [count] + sizes, [list_vector] + vectors, [list_kind] + ["domain"] * 3
        labels, units = '"time" "" "" ""', f'"{unit}" "" "" ""'
    else:
        data = np.ascontiguousarray(frames_tkji)
        sizes, vectors, kinds = sizes + [count], vectors + [list_vector], ["domain"] * 3 + [list_kind]
        labels, units = '"" "" "" "time"', f'"" "" "" "{unit}"'
    types = {np.dtype(np.int16): "short", np.dtype(np.uint8): "unsigned char", np.dtype(np.float32): "float"}
    header = "\n".join([
        "NRRD0004", f"type: {types[data.dtype]}", "dimension: 4", "space: left-posterior-superior",
        "sizes: " + " ".join(map(str, sizes)), "space directions: " + " ".join(vectors), "kinds: " + " ".join(kinds),
        f"labels: {labels}", f"units: {units}", "endian: little", "encoding: gzip",
        "space origin: (" + ",".join(repr(float(v)) for v in ijk_to_lps[:3, 3]) + ")",
        "DataNodeClassName:=vtkMRMLScalarVolumeNode", f"axis {axis} index type:=numeric",
        f"axis {axis} index values:=" + " ".join(f"{t:g}" for t in times)]) + "\n\n"
    with open(path, "wb") as f:
        f.write(header.encode() + gzip.compress(data.astype(data.dtype.newbyteorder("<")).tobytes()))
