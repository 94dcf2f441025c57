"""What ships: the wheel and the Slicer extension carry the engine without the lab; one version; every
third-party module the shipped code imports is a declared dependency."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LIB = ROOT / "PLCLSegmentation" / "PLCLSegmentationLib"
#: Import name -> distribution name, where they differ.
DISTRIBUTIONS = {"nrrd": "pynrrd", "SimpleITK": "SimpleITK", "matplotlib": "matplotlib", "PIL": "pillow"}
#: Imported only where present, with a fallback (curve_plot.py: no PNG without matplotlib), or lazily with a
#: one-line message naming the extra (files/dicom_seg.py: --format dicom-seg needs the [dicom] extra).
#: method/backends.py: --backend onnxruntime|openvino needs the [onnx] or [openvino] extra (exit 2 without it).
OPTIONAL = {"matplotlib", "highdicom", "pydicom", "pyarrow",  # pyarrow: Parquet only where it is
            "onnxruntime", "onnx", "openvino"}
STANDARD = set(sys.stdlib_module_names)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    result = subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(out), str(ROOT)],
                            capture_output=True, text=True)
    assert result.returncode == 0, f"pip wheel failed: {result.stderr.strip()[-2000:]}"  # a broken build fails
    [built] = out.glob("*.whl")
    return built


def test_the_wheel_ships_the_engine_without_the_lab(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    assert "PLCLSegmentationLib/engine/protocol.py" in names and "PLCLSegmentationLib/engine/run/__init__.py" in names
    assert not [n for n in names if "/engine/lab/" in n]


def test_one_version_and_declared_dependencies(wheel):
    from PLCLSegmentationLib import __version__

    metadata = next(n for n in zipfile.ZipFile(wheel).namelist() if n.endswith(".dist-info/METADATA"))
    text = zipfile.ZipFile(wheel).read(metadata).decode()
    assert f"\nVersion: {__version__}\n" in text
    required = {line.split(":", 1)[1].split(";")[0].split(">")[0].split("=")[0].split("<")[0].strip().lower()
                for line in text.splitlines() if line.startswith("Requires-Dist:") and "extra ==" not in line}
    lab = {line.split(":", 1)[1].split(";")[0].split(">")[0].strip().lower()
           for line in text.splitlines() if line.startswith("Requires-Dist:") and "extra == \"lab\"" in line}
    shipped = [p for p in LIB.rglob("*.py") if "lab" not in p.relative_to(LIB).parts and "__pycache__" not in p.parts
               and "engine" in p.relative_to(LIB).parts]
    for imported in sorted(third_party_imports(shipped) - OPTIONAL):
        assert DISTRIBUTIONS.get(imported, imported).lower() in required, f"{imported} is not a declared dependency"
    for imported in sorted(third_party_imports(list((LIB / "engine" / "lab").rglob("*.py")))):
        distribution = DISTRIBUTIONS.get(imported, imported).lower()
        assert distribution in required | lab, f"the lab imports {imported}, undeclared (dependencies, [lab])"


def third_party_imports(paths: list[Path]) -> set[str]:
    names = set()
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
                names.add(node.module.split(".")[0])
    return {n for n in names if n not in STANDARD and n != "PLCLSegmentationLib"}


def test_lab_commands_without_the_lab_say_so_in_one_line(wheel, tmp_path):
    """The installed wheel (no lab): `plcl demo` and `plcl bench` are usage errors naming how to get the lab."""
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(target),
                    str(wheel)], check=True, capture_output=True)
    env = {**os.environ, "PYTHONPATH": str(target)}
    for command in (["demo", "--out", str(tmp_path / "demo")], ["bench", "--data", str(tmp_path)]):
        result = subprocess.run([sys.executable, "-m", "PLCLSegmentationLib.engine", *command], cwd=tmp_path, env=env,
                                capture_output=True, text=True)
        assert result.returncode == 2, result.stderr
        assert "lab tool" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "demo").exists()
    where = subprocess.run([sys.executable, "-c", "import PLCLSegmentationLib; print(PLCLSegmentationLib.__file__)"],
                           env=env, cwd=tmp_path, capture_output=True, text=True).stdout
    assert str(target) in where  # the wheel's copy ran, not the checkout's
