"""Style is part of the suite: ruff must pass on the package and the tests."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest
from conftest import REPO


def test_ruff_is_clean():
    ruff = shutil.which("ruff") or str(REPO / ".venv" / "bin" / "ruff")
    if not shutil.which(ruff):
        pytest.skip("ruff is not installed (make test installs it)")
    result = subprocess.run([ruff, "check", "PLCLSegmentation", "Testing"], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_engine_imports_neither_slicer_nor_qt_nor_vtk():
    code = ("import sys; import PLCLSegmentationLib.engine.cli, PLCLSegmentationLib.engine.run.training; "
            "bad = [m for m in ('slicer', 'qt', 'vtk', 'ctk') if m in sys.modules]; print(bad); sys.exit(bool(bad))")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO / "PLCLSegmentation", capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
