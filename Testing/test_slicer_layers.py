"""The Slicer side takes from the engine only its torch-free contract (protocol) and slicing.

The module's own files run inside Slicer, where the engine's heavy packages (torch, SimpleITK) may
be missing: they live in the child process. Every import counts, inside functions too.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

MODULE = Path(__file__).resolve().parents[1] / "PLCLSegmentation"
LIB = MODULE / "PLCLSegmentationLib"
ENGINE = "PLCLSegmentationLib.engine"
#: The engine modules the Slicer side may import.
ALLOWED = {f"{ENGINE}.protocol", f"{ENGINE}.slicing"}


def slicer_side_files() -> list[Path]:
    return [MODULE / "PLCLSegmentation.py", *sorted(LIB.glob("*.py"))]


def engine_imports(path: Path, lib: Path = LIB) -> set[str]:
    """The engine modules ``path`` imports (absolute names), anywhere in the file."""
    in_package = path.parent == lib
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level == 1 and in_package:
                base = "PLCLSegmentationLib" + (f".{node.module}" if node.module else "")
            elif node.level == 0:
                base = node.module or ""
            else:
                base = "?"  # climbs out of the package: reported as it is
            # "from .engine import slicing" imports the module engine.slicing.
            names = [f"{base}.{alias.name}" if base == ENGINE else base for alias in node.names]
        else:
            continue
        found |= {name for name in names if name == ENGINE or name.startswith(ENGINE + ".") or name == "?"}
    return found


def forbidden_imports(files: list[Path], lib: Path = LIB) -> dict[str, list[str]]:
    found = {path.name: engine_imports(path, lib) - ALLOWED for path in files}
    return {name: sorted(names) for name, names in found.items() if names}


def test_the_slicer_side_imports_only_protocol_and_slicing_from_the_engine():
    files = slicer_side_files()
    assert len(files) > 10, "the check looks in the wrong place"
    assert not forbidden_imports(files)
    assert any(engine_imports(path) for path in files), "the check finds no engine import at all"


def test_the_check_sees_a_forbidden_import_inside_a_function(tmp_path):
    package = tmp_path / "PLCLSegmentationLib"
    package.mkdir()
    for name, text in (("fine.py", "from .engine import slicing\nfrom .engine.protocol import DEVICES\n"),
                       ("lazy.py", "def f():\n    from .engine.run import training\n"),
                       ("whole.py", "import PLCLSegmentationLib.engine.method.network\n"),
                       ("sibling.py", "from .engine import config\n")):
        (package / name).write_text(text)
    found = forbidden_imports(sorted(package.glob("*.py")), package)
    assert found == {"lazy.py": [f"{ENGINE}.run"], "sibling.py": [f"{ENGINE}.config"],
                     "whole.py": [f"{ENGINE}.method.network"]}


def loaded_by(module: str) -> dict[str, bool]:
    """Which heavy packages a fresh interpreter has loaded after importing ``module``."""
    code = (f"import sys; sys.path.insert(0, {str(MODULE)!r}); import {module}; import json; "
            "print(json.dumps({name: name in sys.modules for name in ('torch', 'SimpleITK', 'numpy')}))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_the_contract_loads_neither_torch_nor_simpleitk_nor_numpy():
    assert loaded_by(f"{ENGINE}.protocol") == {"torch": False, "SimpleITK": False, "numpy": False}


def test_slicing_loads_neither_torch_nor_simpleitk():
    loaded = loaded_by(f"{ENGINE}.slicing")
    assert not loaded["torch"] and not loaded["SimpleITK"], loaded
