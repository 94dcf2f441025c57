"""Export DICOM SEG of an accepted segmentation through Slicer's own exporter, on a real MRML scene.

A SYNTHETIC volume is written as a DICOM series (pydicom), loaded into the scene and given what Slicer's
DICOM loader gives it (DICOMScalarVolumePlugin at v5.8.0: the volume's ``DICOM.instanceUIDs``, one per
slice in slice order, and its place under a patient and a study in the subject hierarchy); another
volume is loaded from NIfTI. The fake engine segments both, and the user accepts the predictions.
Slicer's DICOM SEG plugin (QuantitativeReporting in 5.8 and 5.10, core from 5.12) and its DICOM
database need the application: everything up to the plugin's call is tested here, the call itself by
hand in Slicer (docs/slicer-module.md).
"""

from __future__ import annotations

import ast
import os
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("slicer", reason="slicer-core is not installed")
pydicom = pytest.importorskip("pydicom", reason="pydicom is not installed")

from dicom_series import write_series  # noqa: E402
from slicer_support import (  # noqa: E402
    CARDIAC_SEGMENTS,
    FAKE_ENGINE,
    ROOT,
    SlicerApp,
    read_labels,
    snapshot,
    synthetic_case,
)

from PLCLSegmentationLib import dicom_export, scene_io  # noqa: E402
from PLCLSegmentationLib.engine.files.volumes import read_volume  # noqa: E402
from PLCLSegmentationLib.logic import PLCLSegmentationLogic  # noqa: E402
from PLCLSegmentationLib.parameters import PREDICTED, REVIEWED  # noqa: E402
from PLCLSegmentationLib.services import PLCLError  # noqa: E402

pytestmark = pytest.mark.mrml


def load_dicom_series(app: SlicerApp, folder: Path, case: str) -> tuple[object, list[str]]:
    """``case`` written as a DICOM series and loaded as Slicer's DICOM loader leaves it; returns the volume
    and the SOP instance UIDs of its slices in slice order."""
    image = read_volume(synthetic_case(case)[0])
    grid = image.grid
    write_series(folder, image.array.astype(np.int16), grid.spacing, grid.origin, grid.direction_matrix)
    files = sorted(folder.glob("*.dcm"))  # IM00000.dcm ...: slice k along the normal is file k
    uids = [str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID) for path in files]
    volume = app.load_volume(files[0], f"{case} (DICOM)")
    assert volume.GetImageData().GetDimensions()[2] == len(files)
    volume.SetAttribute(dicom_export.INSTANCE_UIDS, " ".join(uids))
    hierarchy = app.services.subject_hierarchy()
    patient = hierarchy.CreateSubjectItem(hierarchy.GetSceneItemID(), "Phantom^Synthetic")
    study = hierarchy.CreateStudyItem(patient, "SYNTHETIC study")
    hierarchy.SetItemParent(hierarchy.GetItemByDataNode(volume), study)
    return volume, uids


class Scene:
    """Three SYNTHETIC volumes: one annotated by the user, one from DICOM and one from NIfTI, both
    segmented by the (fake) engine."""

    def __init__(self, tmp_path: Path) -> None:
        self.app = SlicerApp()
        self.annotated = self.app.load_volume(synthetic_case("synthetic_001")[0], "synthetic_001")
        self.dicom, self.uids = load_dicom_series(self.app, tmp_path / "dicom", "synthetic_003")
        self.plain = self.app.load_volume(synthetic_case("synthetic_002")[0], "synthetic_002")
        self.user = self.app.add_segmentation(self.annotated, read_labels(synthetic_case("synthetic_001")[1]),
                                              CARDIAC_SEGMENTS, "Annotation")
        self.user_before = snapshot(self.user)
        self.logic = PLCLSegmentationLogic(self.app.services, models_dir=tmp_path / "models",
                                           engine_command=[sys.executable, str(FAKE_ENGINE)],
                                           environment={**os.environ, "FAKE_ENGINE_STEP_S": "0.002"})
        self.logic.refresh()
        self.logic.set_annotation(self.annotated, self.user)
        self.logic.state.set("iterations", 4)
        self.logic.train()
        job = self.logic.wait(120)
        assert job.state.value == "done", job.error

    def record(self, volume):
        return self.logic.state.record_for(volume)


@pytest.fixture
def scene(tmp_path):
    scene = Scene(tmp_path)
    yield scene
    scene.logic.shutdown()
    assert snapshot(scene.user) == scene.user_before, "the user's segmentation changed"


def test_export_is_offered_only_for_an_accepted_segmentation_of_a_volume_from_dicom(scene):
    logic = scene.logic
    assert scene.record(scene.dicom).role == PREDICTED
    assert "has no accepted segmentation" in logic.dicom_seg_problem(scene.dicom)
    logic.accept(scene.dicom)
    logic.accept(scene.plain)
    assert scene.record(scene.dicom).role == scene.record(scene.plain).role == REVIEWED
    assert logic.dicom_seg_problem(scene.dicom) is None
    refused = {
        "plain": (scene.plain, "'synthetic_002' was not loaded from Slicer's DICOM database"),
        "annotated": (scene.annotated, "'synthetic_001' has no accepted segmentation"),
        "nothing selected": (None, "Select a volume"),
    }
    for volume, words in refused.values():
        line = logic.dicom_seg_problem(volume)
        assert words in line and "\n" not in line, line
    with pytest.raises(PLCLError, match="was not loaded from Slicer's DICOM database"):
        logic.prepare_dicom_seg(scene.plain)
    with pytest.raises(PLCLError, match="has no accepted segmentation"):
        logic.prepare_dicom_seg(scene.annotated)


def test_the_export_is_built_with_the_volume_its_segmentation_and_their_dicom_images(scene):
    logic = scene.logic
    logic.accept(scene.dicom)
    record = scene.record(scene.dicom)
    fingerprint = scene_io.fingerprint(record.segmentation)
    export = logic.prepare_dicom_seg(scene.dicom)
    hierarchy = scene.app.services.subject_hierarchy()
    # The plugin is given the accepted segmentation's item; it reads the volume through the segmentation's
    # reference geometry, and the files through the volume's instance UIDs.
    assert export.segmentation is record.segmentation and export.volume is scene.dicom
    assert export.item == hierarchy.GetItemByDataNode(record.segmentation)
    assert hierarchy.GetItemDataNode(export.item).GetID() == record.segmentation.GetID()
    role = record.segmentation.GetReferenceImageGeometryReferenceRole()
    assert record.segmentation.GetNodeReference(role).GetID() == scene.dicom.GetID()
    assert export.instance_uids == scene.uids
    # Under the volume's study (where Slicer's DICOM export finds the patient and the study), referring to
    # the volume's images; each segment made by PLCLSegmentation and reviewed by a person.
    study = hierarchy.GetItemParent(hierarchy.GetItemByDataNode(scene.dicom))
    assert hierarchy.GetItemLevel(study) == "Study"
    assert hierarchy.GetItemParent(export.item) == study
    assert hierarchy.GetItemAttribute(export.item, dicom_export.REFERENCED_INSTANCE_UIDS).split() == scene.uids
    segments = record.segmentation.GetSegmentation()
    assert segments.GetNumberOfSegments() == 3
    for index in range(segments.GetNumberOfSegments()):
        segment = segments.GetNthSegment(index)
        assert _tag(segment, dicom_export.ALGORITHM_TYPE_TAG) == "SEMIAUTOMATIC"
        assert _tag(segment, dicom_export.ALGORITHM_NAME_TAG) == "PLCLSegmentation"
        assert dicom_export.terminology_codes(scene_io.get_terminology(segment))
    # The voxels, names and colours stay as accepted.
    assert scene_io.fingerprint(record.segmentation) == fingerprint
    assert scene.record(scene.dicom).role == REVIEWED


def _tag(segment, name: str) -> str:
    import vtk

    value = vtk.reference("")
    assert segment.GetTag(name, value), name
    return str(value)


def _no_terminology(scene) -> str:
    segment = scene.record(scene.dicom).segmentation.GetSegmentation().GetNthSegment(1)
    scene_io.set_terminology(segment, "")
    return f"Segment '{segment.GetName()}' of 'synthetic_003 (DICOM) segmentation' has no terminology"


def _empty(scene) -> str:
    segmentation = scene.record(scene.dicom).segmentation
    segments = segmentation.GetSegmentation()
    for index in range(segments.GetNumberOfSegments()):
        labelmap = segments.GetNthSegment(index).GetRepresentation(segments.GetSourceRepresentationName())
        labelmap.GetPointData().GetScalars().Fill(0)
        labelmap.Modified()
    return "'synthetic_003 (DICOM) segmentation' is empty"


def _other_geometry(scene) -> str:
    segmentation = scene.record(scene.dicom).segmentation
    segmentation.SetReferenceImageGeometryParameterFromVolumeNode(scene.plain)
    return "is not on the grid of 'synthetic_003 (DICOM)'"


def _cropped(scene) -> str:
    scene.dicom.SetAttribute(dicom_export.INSTANCE_UIDS, " ".join(scene.uids[:-2]))
    slices = len(scene.uids)
    return f"'synthetic_003 (DICOM)' has {slices} slices but was loaded from {slices - 2} DICOM images"


@pytest.mark.parametrize("spoil", [_no_terminology, _empty, _other_geometry, _cropped],
                         ids=["segment_without_terminology", "every_segment_empty", "geometry_of_another_volume",
                              "volume_cropped_after_loading"])
def test_a_segmentation_slicer_cannot_write_as_seg_is_refused_in_one_line(scene, spoil):
    logic = scene.logic
    logic.accept(scene.dicom)
    words = spoil(scene)
    line = logic.dicom_seg_problem(scene.dicom)
    assert line is not None and words in line and "\n" not in line, line
    with pytest.raises(PLCLError) as error:
        logic.prepare_dicom_seg(scene.dicom)
    assert str(error.value) == line
    assert not scene.app.services.subject_hierarchy().GetItemAttribute(
        scene.app.services.subject_hierarchy().GetItemByDataNode(scene.record(scene.dicom).segmentation),
        dicom_export.REFERENCED_INSTANCE_UIDS), "a refused export changed the segmentation"


def test_a_frame_of_a_sequence_is_refused_in_one_line(tmp_path):
    from slicer_support import moving_phantom

    app = SlicerApp()
    images, _ = moving_phantom(frames=3)
    proxy = app.add_volume_sequence(images, "cine")
    logic = PLCLSegmentationLogic(app.services, models_dir=tmp_path / "models")
    logic.refresh()
    line = logic.dicom_seg_problem(proxy, 1)
    assert "'cine' is a sequence" in line and "\n" not in line
    with pytest.raises(PLCLError, match="is a sequence"):
        logic.prepare_dicom_seg(proxy, 1)


def test_without_slicers_dicom_seg_exporter_the_export_says_what_to_install(scene, tmp_path):
    """slicer-core has no DICOM plugins, as a Slicer 5.8 without QuantitativeReporting has no SEG plugin:
    the export stops before the plugin with the line that says what to install, and writes nothing."""
    logic = scene.logic
    logic.accept(scene.dicom)
    out = tmp_path / "seg"
    out.mkdir()
    with pytest.raises(PLCLError) as error:
        logic.export_dicom_seg(scene.dicom, out)
    assert str(error.value) == dicom_export.PLUGIN_SOURCE and "QuantitativeReporting" in str(error.value)
    assert list(out.iterdir()) == []
    with pytest.raises(PLCLError, match="folder not found"):
        logic.export_dicom_seg(scene.dicom, tmp_path / "nowhere")


@pytest.mark.parametrize("entry", [
    "Segmentation category and type - 3D Slicer General Anatomy list~SCT^85756007^Tissue~SCT^85756007^Tissue~^^~"
    "Anatomic codes - DICOM master list~^^~^^",
])
def test_terminology_codes_of_slicers_entry_strings(entry):
    assert dicom_export.terminology_codes(entry) == ("SCT^85756007^Tissue", "SCT^85756007^Tissue")
    assert dicom_export.terminology_codes("") is None
    assert dicom_export.terminology_codes("context~^^~SCT^85756007^Tissue~^^") is None
    assert dicom_export.terminology_codes("context~SCT^85756007^Tissue~SCT^^Tissue") is None


def test_the_dicom_export_uses_only_the_listed_python_apis():
    """The names dicom_export.py takes from the plugin, its exportables, the DICOM database and
    slicer.modules: each listed in slicer_api.DICOM_EXPORT_API with where it is at v5.8.0."""
    import slicer_api

    tree = ast.parse((ROOT / "PLCLSegmentation" / "PLCLSegmentationLib" / "dicom_export.py").read_text())
    used = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and ast.unparse(node.value) in ("plugin", "exportable", "database",
                                                                            "slicer.modules"):
            used.add(node.attr)
        if isinstance(node, ast.Call) and ast.unparse(node.func) == "getattr" and len(node.args) > 1 \
                and isinstance(node.args[1], ast.Constant):
            used.add(node.args[1].value)
    assert {"examineForExport", "export", "directory", "dicomPlugins", "fileForInstance"} <= used
    assert used <= set(slicer_api.DICOM_EXPORT_API), sorted(used - set(slicer_api.DICOM_EXPORT_API))


def test_the_listed_dicom_export_apis_are_in_slicer_5_8_and_5_12():
    """With a Slicer source checkout (SLICER_SOURCE): each listed file names its API at v5.8.0, the
    script repository's recipe is the same at v5.8.0 and v5.12.0, and Slicer 5.12's own
    DICOMSegmentationPlugin registers under the key and has examineForExport and export."""
    import re
    import subprocess

    import slicer_api

    source = os.environ.get("SLICER_SOURCE")
    if not source:
        pytest.skip("set SLICER_SOURCE to a clone of Slicer/Slicer to check the attributions")

    def show(tag: str, path: str) -> str:
        return subprocess.run(["git", "-C", source, "show", f"{tag}:{path}"], capture_output=True, text=True).stdout

    wrong = [f"{name}: {path}" for name, path in slicer_api.DICOM_EXPORT_API.items()
             if not path.startswith("CTK") and not re.search(rf"\b{name}\b", show("v5.8.0", path))]
    assert not wrong, wrong
    recipe = "Docs/developer_guide/script_repository/dicom.md"
    for tag in ("v5.8.0", "v5.12.0"):
        assert "exporter.examineForExport(segmentationShItem)" in show(tag, recipe), tag
    plugin = show("v5.12.0", "Modules/Scripted/DICOMPlugins/DICOMSegmentationPlugin.py")
    assert f'dicomPlugins["{dicom_export.PLUGIN}"]' in plugin
    assert "def examineForExport(self, subjectHierarchyItemID)" in plugin and "def export(self, exportables)" in plugin
    assert "DICOM.SegmentAlgorithmType" in plugin and dicom_export.INSTANCE_UIDS in plugin
