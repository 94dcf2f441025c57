"""The extension's files hang together: .ui names, CMake lists, extension description, icon, imports."""

from __future__ import annotations

import ast
import re
import struct
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODULE = ROOT / "PLCLSegmentation"
LIB = MODULE / "PLCLSegmentationLib"
UI = MODULE / "Resources" / "UI" / "PLCLSegmentation.ui"
WIDGET_CODE = [LIB / "widget.py", MODULE / "PLCLSegmentation.py"]

QT_CLASSES = {"QWidget", "QLabel", "QPushButton", "QComboBox", "QSpinBox", "QCheckBox", "QLineEdit", "QProgressBar",
              "QPlainTextEdit", "QTableWidget"}


def ui_widgets() -> dict[str, str]:
    root = ET.parse(UI).getroot()
    return {w.get("name"): w.get("class") for w in root.iter("widget")}


def test_every_widget_the_code_uses_is_in_the_ui_file():
    names = ui_widgets()
    used: set[str] = set()
    for path in WIDGET_CODE:
        used |= set(re.findall(r"\bui\.([A-Za-z_]\w*)", path.read_text()))
    assert used, "no ui.<name> found: the test looks in the wrong place"
    missing = sorted(used - set(names))
    assert not missing, f"used in the code but not in {UI.name}: {missing}"


def test_ui_file_is_valid_designer_xml_with_declared_slicer_widgets():
    root = ET.parse(UI).getroot()
    assert root.tag == "ui" and root.findtext("class") == "PLCLSegmentation"
    top = root.find("widget")
    assert top.get("class") == "qMRMLWidget" and top.get("name") == "PLCLSegmentation"
    declared = {c.findtext("class") for c in root.iter("customwidget")}
    used = set(ui_widgets().values())
    assert used - QT_CLASSES <= declared, f"undeclared custom widgets: {sorted(used - QT_CLASSES - declared)}"
    assert {"qMRMLNodeComboBox", "qMRMLCheckableNodeComboBox", "qMRMLSegmentsTableView", "ctkCollapsibleButton",
            "ctkPathLineEdit"} <= used
    names = [w.get("name") for w in root.iter("widget")]
    assert len(names) == len(set(names)), "widget names must be unique"
    receivers = {c.findtext("receiver") for c in root.iter("connection")}
    mrml_widgets = {n for n, c in ui_widgets().items() if c.startswith("qMRML") and n != "PLCLSegmentation"}
    assert mrml_widgets <= receivers, f"MRML widgets without the scene: {sorted(mrml_widgets - receivers)}"


def cmake_list(text: str, variable: str) -> list[str]:
    match = re.search(rf"set\({variable}\s+(.*?)\)", text, re.S)
    assert match, f"{variable} not found"
    return [item.replace("${MODULE_NAME}", "PLCLSegmentation") for item in match.group(1).split()]


def test_module_cmake_lists_every_python_file_and_resource_it_ships():
    text = (MODULE / "CMakeLists.txt").read_text()
    scripts = cmake_list(text, "MODULE_PYTHON_SCRIPTS")
    resources = cmake_list(text, "MODULE_PYTHON_RESOURCES")
    shipped = sorted(str(p.relative_to(MODULE)) for p in MODULE.rglob("*.py")
                     if "__pycache__" not in p.parts and "lab" not in p.relative_to(MODULE).parts)
    assert sorted(scripts) == shipped, (f"not listed: {sorted(set(shipped) - set(scripts))}; "
                                        f"listed but missing: {sorted(set(scripts) - set(shipped))}")
    resource_files = sorted(str(p.relative_to(MODULE)) for p in (MODULE / "Resources").rglob("*") if p.is_file())
    assert sorted(resources) == resource_files
    assert "slicerMacroBuildScriptedModule(" in text and "WITH_GENERIC_TESTS" in text
    assert re.search(r"slicer_add_python_unittest\(SCRIPT \$\{MODULE_NAME\}\.py\)", text)


def test_extension_description():
    text = (ROOT / "CMakeLists.txt").read_text()
    for variable in ("EXTENSION_HOMEPAGE", "EXTENSION_CATEGORY", "EXTENSION_CONTRIBUTORS", "EXTENSION_DESCRIPTION",
                     "EXTENSION_ICONURL", "EXTENSION_SCREENSHOTURLS", "EXTENSION_DEPENDS"):
        assert re.search(rf"set\({variable} ", text), variable
    assert 'set(EXTENSION_DEPENDS "PyTorch")' in text
    order = ["project(PLCLSegmentation)", "find_package(Slicer REQUIRED)", "include(${Slicer_USE_FILE})",
             "add_subdirectory(PLCLSegmentation)", "include(${Slicer_EXTENSION_GENERATE_CONFIG})",
             "include(${Slicer_EXTENSION_CPACK})"]
    positions = [text.index(item) for item in order]
    assert positions == sorted(positions)
    keys = {line.split()[0] for line in (ROOT / "PLCLSegmentation.s4ext").read_text().splitlines()
            if line.strip() and not line.startswith("#")}
    assert {"scm", "scmurl", "scmrevision", "depends", "build_subdirectory", "homepage", "contributors", "category",
            "iconurl", "status", "description", "screenshoturls", "enabled"} <= keys


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return struct.unpack(">II", data[16:24])


def test_icons_are_128_pixel_pngs():
    assert png_size(MODULE / "Resources" / "Icons" / "PLCLSegmentation.png") == (128, 128)
    assert png_size(ROOT / "Resources" / "PLCLSegmentation.png") == (128, 128)


def top_level_imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in tree.body:
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_only_the_widget_imports_qt_or_slicer_at_import_time():
    for path in LIB.glob("*.py"):
        if path.name == "widget.py":
            continue
        assert not top_level_imports(path) & {"qt", "ctk", "slicer", "vtk"}, path.name
    for path in (LIB / "engine").rglob("*.py"):
        assert not top_level_imports(path) & {"qt", "ctk", "slicer", "vtk"}, path.name


def test_module_file_declares_the_four_classes():
    tree = ast.parse((MODULE / "PLCLSegmentation.py").read_text())
    bases = {node.name: {ast.unparse(b) for b in node.bases} for node in tree.body if isinstance(node, ast.ClassDef)}
    assert "ScriptedLoadableModule" in bases["PLCLSegmentation"]
    assert {"ScriptedLoadableModuleWidget", "VTKObservationMixin"} <= bases["PLCLSegmentationWidget"]
    assert "ScriptedLoadableModuleLogic" in bases["PLCLSegmentationLogic"]
    assert "ScriptedLoadableModuleTest" in bases["PLCLSegmentationTest"]


USER_FACING_CALLS = {"errorDisplay", "tryWithErrorDisplay", "showingErrors", "confirmOkCancelDisplay",
                     "getSaveFileName", "getOpenFileName", "addItem", "infoDisplay", "warningDisplay"}


def test_user_facing_strings_of_the_widget_are_translatable():
    for path in WIDGET_CODE:
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) \
                    in USER_FACING_CALLS:
                for argument in [*node.args, *(k.value for k in node.keywords)]:
                    constant = isinstance(argument, ast.Constant) and isinstance(argument.value, str)
                    text = isinstance(argument, ast.JoinedStr) or (constant and argument.value.strip())
                    assert not text, f"{path.name}:{node.lineno}: a string shown to users is not wrapped in _()"
            if isinstance(node, ast.Assign) and any(getattr(t, "attr", "") in ("text", "toolTip")
                                                    for t in node.targets):
                assert not (isinstance(node.value, ast.Constant) and isinstance(node.value.value, str)
                            and node.value.value), f"{path.name}:{node.lineno}: untranslated text"


#: Keys of Slicer's extension catalog entry schema v1.0.1 (Schemas/ in Slicer/Slicer, present at tag v5.8.0).
CATALOG_KEYS = {"$schema", "category", "scm_url", "scm_revision", "scm_type", "build_dependencies",
                "build_subdirectory", "enabled", "tier"}


def test_catalog_entry_for_the_extensions_index_agrees_with_cmake_and_s4ext():
    """Since Slicer 5.8 the Extensions Index builds from JSON catalog entries; .s4ext is legacy."""
    import json

    entry = json.loads((ROOT / "PLCLSegmentation.json").read_text())
    assert {"$schema", "category", "scm_url"} <= set(entry) <= CATALOG_KEYS, sorted(entry)
    assert "slicer-extension-catalog-entry-schema-v1.0." in entry["$schema"]
    cmake = (ROOT / "CMakeLists.txt").read_text()
    value = {name: re.search(rf'set\({name} "([^"]*)"\)', cmake).group(1)
             for name in ("EXTENSION_REPOSITORY", "EXTENSION_CATEGORY", "EXTENSION_DEPENDS", "EXTENSION_HOMEPAGE",
                          "EXTENSION_ICONURL")}
    repository = value["EXTENSION_REPOSITORY"]
    assert entry["category"] == value["EXTENSION_CATEGORY"]
    assert entry["build_dependencies"] == value["EXTENSION_DEPENDS"].split(";") == ["PyTorch"]
    assert entry["scm_url"] == repository + ".git"
    assert value["EXTENSION_HOMEPAGE"] == repository
    owner_and_name = repository.removeprefix("https://github.com/")
    assert value["EXTENSION_ICONURL"].startswith(f"https://raw.githubusercontent.com/{owner_and_name}/")
    s4ext = dict(line.split(" ", 1) for line in (ROOT / "PLCLSegmentation.s4ext").read_text().splitlines()
                 if line.strip() and not line.startswith("#") and " " in line)
    assert s4ext["scmurl"] == entry["scm_url"] and s4ext["homepage"] == repository
    assert s4ext["category"] == entry["category"] and s4ext["depends"] == "PyTorch"
    assert s4ext["scmrevision"] == entry["scm_revision"]


def test_the_segments_table_cannot_edit_the_users_segments():
    """readOnly only removes the name column's edit triggers: a double-click on the colour column still
    opens the terminology dialog and sets the segment's name, colour and terminology
    (qMRMLSegmentsTableView::onSegmentsTableDoubleClicked, Slicer v5.8.0 to main). So no colour
    column, and no column that toggles something (visibility, opacity, status, layer)."""
    root = ET.parse(UI).getroot()
    table = next(w for w in root.iter("widget") if w.get("name") == "segmentsTableView")
    properties = {p.get("name"): p.find("bool").text for p in table.findall("property") if p.find("bool") is not None}
    assert properties.get("readOnly") == "true"
    for column in ("colorColumnVisible", "visibilityColumnVisible", "opacityColumnVisible", "statusColumnVisible",
                   "layerColumnVisible"):
        assert properties.get(column) == "false", column


def test_the_supported_slicer_versions_are_stated():
    assert "Supported Slicer versions: 5.8 and later" in (ROOT / "README.md").read_text()
    assert "Supported: Slicer 5.8 and later." in (MODULE / "PLCLSegmentation.py").read_text()
