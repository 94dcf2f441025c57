"""A headless Slicer for the module's tests: slicer-core's real MRML scene and module logics, no Qt.

``SlicerApp`` builds what the Slicer application would: a scene, the application logic with its
colour logic, and the Volumes, Segmentations and Subject hierarchy logics, plus the three slice
views' composite nodes. It also sets ``slicer.mrmlScene`` and ``slicer.modules.<name>.logic()`` so
that ``slicer.util`` helpers work.
"""

from __future__ import annotations

import atexit
import functools
import hashlib
import os
import shutil
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "PLCLSegmentation"))

DATA = ROOT.parent / "shared" / "data"
ACDC = DATA / "acdc"
FAKE_ENGINE = Path(__file__).resolve().with_name("fake_engine.py")
LAUNCHER = Path(__file__).resolve().with_name("launcher.py")

HEART_TERMINOLOGY = ("Segmentation category and type - 3D Slicer General Anatomy list~SCT^123037004^Anatomical "
                     "Structure~SCT^80891009^Heart~^^~Anatomic codes - DICOM master list~^^~^^")
MYOCARDIUM_TERMINOLOGY = ("Segmentation category and type - 3D Slicer General Anatomy list~SCT^123037004^Anatomical "
                          "Structure~SCT^74281007^Myocardium~^^~Anatomic codes - DICOM master list~^^~^^")


class SlicerApp:
    def __init__(self) -> None:
        import slicer
        from vtkmodules.vtkCommonCore import vtkCollection

        from PLCLSegmentationLib.services import SlicerServices

        self.scene = slicer.vtkMRMLScene()
        self.app_logic = slicer.vtkSlicerApplicationLogic()
        self.app_logic.SetMRMLScene(self.scene)
        colors = self.app_logic.GetColorLogic()
        colors.SetMRMLScene(self.scene)
        colors.AddDefaultColorNodes()
        self.app_logic.SetSliceLogics(vtkCollection())
        self.app_logic.SetViewLogics(vtkCollection())
        self.app_logic.SetModuleLogic("Colors", colors)
        self.subject_hierarchy = self._logic(slicer.vtkSlicerSubjectHierarchyModuleLogic, "SubjectHierarchy")
        self.volumes = self._logic(slicer.vtkSlicerVolumesLogic, "Volumes")
        self.segmentations = self._logic(slicer.vtkSlicerSegmentationsModuleLogic, "Segmentations")
        self.sequences = self._logic(slicer.vtkSlicerSequencesLogic, "Sequences")
        for layout in ("Red", "Yellow", "Green"):
            composite = slicer.vtkMRMLSliceCompositeNode()
            composite.SetLayoutName(layout)
            composite.SetSingletonTag(layout)
            self.scene.AddNode(composite)
        slicer.mrmlScene = self.scene
        slicer.modules = SimpleNamespace(
            volumes=SimpleNamespace(logic=lambda: self.volumes),
            segmentations=SimpleNamespace(logic=lambda: self.segmentations),
            subjecthierarchy=SimpleNamespace(logic=lambda: self.subject_hierarchy),
            sequences=SimpleNamespace(logic=lambda: self.sequences))
        self.services = SlicerServices(self.scene, self.segmentations, sequences=self.sequences)

    def _logic(self, cls: Any, name: str) -> Any:
        logic = cls()
        logic.SetMRMLApplicationLogic(self.app_logic)
        logic.SetMRMLScene(self.scene)
        self.app_logic.SetModuleLogic(name, logic)
        return logic

    # --- data -----------------------------------------------------------------------------------
    def load_volume(self, path: str | os.PathLike[str], name: str | None = None) -> Any:
        name = name or Path(path).name.split(".")[0]
        node = self.volumes.AddArchetypeVolume(str(path), name, 0)
        assert node is not None, f"could not load {path}"
        return self._in_hierarchy(node)

    def _in_hierarchy(self, node: Any) -> Any:
        """Give a new node its subject hierarchy item, as the Slicer application does."""
        hierarchy = self.services.subject_hierarchy()
        if not hierarchy.GetItemByDataNode(node):
            hierarchy.CreateItem(hierarchy.GetSceneItemID(), node)
        return node

    def add_volume(self, array: np.ndarray, name: str, ijk_to_ras: np.ndarray | None = None) -> Any:
        import slicer

        node = self.scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
        slicer.util.updateVolumeFromArray(node, array)
        if ijk_to_ras is not None:
            node.SetIJKToRASMatrix(slicer.util.vtkMatrixFromArray(ijk_to_ras))
        node.CreateDefaultDisplayNodes()
        return self._in_hierarchy(node)

    def add_segmentation(self, volume: Any, labels: np.ndarray, segments: list[tuple[str, tuple, str]],
                         name: str = "Segmentation") -> Any:
        """A segmentation drawn on ``volume``: ``labels`` [k, j, i], segment n = label value n."""
        import slicer

        node = self.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", name)
        node.CreateDefaultDisplayNodes()
        node.SetReferenceImageGeometryParameterFromVolumeNode(volume)
        for value, (segment_name, color, terminology) in enumerate(segments, start=1):
            segment_id = node.GetSegmentation().AddEmptySegment(segment_name.replace(" ", "_"), segment_name, color)
            if terminology:
                node.GetSegmentation().GetSegment(segment_id).SetTerminology(terminology)
            slicer.util.updateSegmentBinaryLabelmapFromArray((labels == value).astype(np.uint8), node, segment_id,
                                                             volume)
        return self._in_hierarchy(node)

    @staticmethod
    def paint_slices(segmentation: Any, volume: Any, labels: np.ndarray, axis: int, indices: Sequence[int],
                     segments: list[tuple[str, tuple, str]]) -> None:
        """A reviewer's correction: on slices ``indices`` along array ``axis``, each of ``segments`` (segment n
        by name) painted as ``labels`` == n there, as the Segment Editor leaves it."""
        import slicer

        for value, (name, _, _) in enumerate(segments, start=1):
            segment_id = segmentation.GetSegmentation().GetSegmentIdBySegmentName(name)
            mask = slicer.util.arrayFromSegmentBinaryLabelmap(segmentation, segment_id, volume)
            for index in indices:
                cut = (slice(None),) * axis + (index,)
                mask[cut] = labels[cut] == value
            slicer.util.updateSegmentBinaryLabelmapFromArray(mask, segmentation, segment_id, volume)

    def add_volume_sequence(self, frames: list[np.ndarray], name: str, ijk_to_ras: np.ndarray | None = None,
                            index_values: list[str] | None = None, unit: str = "s", text_index: bool = False) -> Any:
        """A volume sequence of ``frames`` [k, j, i] in a new browser, as Slicer loads a cine series:
        returns the browser's proxy volume (the node the user sees)."""
        import slicer

        sequence = self.scene.AddNewNodeByClass("vtkMRMLSequenceNode", f"{name} sequence")
        sequence.SetIndexName("time")
        sequence.SetIndexUnit(unit)
        if text_index:
            sequence.SetIndexType(sequence.TextIndex)
        for index, array in enumerate(frames):
            volume = slicer.vtkMRMLScalarVolumeNode()
            slicer.util.updateVolumeFromArray(volume, array)
            if ijk_to_ras is not None:
                volume.SetIJKToRASMatrix(slicer.util.vtkMatrixFromArray(ijk_to_ras))
            sequence.SetDataNodeAtValue(volume, index_values[index] if index_values else f"{0.04 * index:g}")
        browser = self.scene.AddNewNodeByClass("vtkMRMLSequenceBrowserNode", f"{name} browser")
        browser.SetAndObserveMasterSequenceNodeID(sequence.GetID())
        self.sequences.UpdateProxyNodesFromSequences(browser)
        proxy = browser.GetProxyNode(sequence)
        proxy.SetName(name)
        proxy.CreateDefaultDisplayNodes()
        return self._in_hierarchy(proxy)

    def nodes(self) -> set[str]:
        return {self.scene.GetNthNode(i).GetID() for i in range(self.scene.GetNumberOfNodes())}

    def nodes_by_class(self, class_name: str) -> list[Any]:
        count = self.scene.GetNumberOfNodesByClass(class_name)
        return [self.scene.GetNthNodeByClass(i, class_name) for i in range(count)]

    # --- scenes ---------------------------------------------------------------------------------
    def save(self, folder: str | os.PathLike[str]) -> Path:
        """Save the scene with all its data in ``folder`` (as Slicer does for a data bundle)."""
        Path(folder).mkdir(parents=True, exist_ok=True)
        assert self.app_logic.SaveSceneToSlicerDataBundleDirectory(str(folder), None)
        return Path(folder) / f"{Path(folder).name}.mrml"

    def _cache_for_bundles(self, folder: Path) -> None:
        """The data I/O manager the application has: a scene reads .seq.mrb files (segmentation
        sequences) through its cache folder."""
        import slicer

        cache = slicer.vtkCacheManager()
        cache.SetRemoteCacheDirectory(str(folder / "cache"))
        manager = slicer.vtkDataIOManager()
        manager.SetCacheManager(cache)
        self.scene.SetCacheManager(cache)
        self.scene.SetDataIOManager(manager)

    @classmethod
    def open(cls, mrml: str | os.PathLike[str]) -> SlicerApp:
        app = cls()
        app.scene.SetURL(str(mrml))
        app._cache_for_bundles(Path(mrml).parent)
        assert app.scene.Import(), f"could not load {mrml}"
        return app


def slow_interpreter(folder: Path) -> tuple[str, Path]:
    """A Python that takes a second to start and counts its runs (in ``runs``)."""
    runs = folder / "runs.txt"
    script = folder / "slow-python"
    script.write_text(f"#!/bin/sh\necho run >> '{runs}'\nsleep 1\nexec '{sys.executable}' \"$@\"\n")
    script.chmod(0o755)
    return str(script), runs


def alive(pid: int) -> bool:
    """Whether process ``pid`` runs (a zombie, dead but not yet reaped, does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().split(")")[-1].split()[0] == "Z")


def red_slice_view(app: SlicerApp) -> Any:
    """The application's Red slice view and its orientation presets, absent from slicer-core's bare scene."""
    import slicer

    slicer.vtkMRMLSliceNode.AddDefaultSliceOrientationPresets(app.scene)
    red = app.scene.CreateNodeByClass("vtkMRMLSliceNode")
    red.UnRegister(None)
    red.SetLayoutName("Red")
    red.SetSingletonTag("Red")
    return app.scene.AddNode(red)


def slice_views(app: SlicerApp) -> dict[str, Any]:
    """The application's Red, Yellow and Green slice views in their default orientations (Axial, Sagittal,
    Coronal), by orientation; absent from slicer-core's bare scene."""
    import slicer

    slicer.vtkMRMLSliceNode.AddDefaultSliceOrientationPresets(app.scene)
    nodes = {}
    for layout, orientation in (("Red", "Axial"), ("Yellow", "Sagittal"), ("Green", "Coronal")):
        node = app.scene.CreateNodeByClass("vtkMRMLSliceNode")
        node.UnRegister(None)
        node.SetLayoutName(layout)
        node.SetSingletonTag(layout)
        node = app.scene.AddNode(node)
        node.SetOrientation(orientation)
        nodes[orientation] = node
    return nodes


def acdc_case(name: str) -> tuple[Path, Path]:
    return ACDC / "images" / f"{name}.nii.gz", ACDC / "labels" / f"{name}.nii.gz"


@functools.cache
def synthetic_data() -> Path:
    """Six SYNTHETIC phantoms (the project's own generator: oblique, every second case stored with
    permuted axes), made once per test process: the module's suites test the module, not accuracy,
    so they run in a clone without the real data."""
    from PLCLSegmentationLib.engine.lab.synthetic import make_synthetic_dataset

    folder = Path(tempfile.mkdtemp(prefix="plcl-synthetic-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    return make_synthetic_dataset(folder, n_cases=6, seed=0)


def synthetic_case(name: str) -> tuple[Path, Path]:
    """(image, label) of a SYNTHETIC case: synthetic_001 ... synthetic_006."""
    data = synthetic_data()
    return data / "images" / f"{name}.nii.gz", data / "labels" / f"{name}.nii.gz"


def read_labels(path: Path) -> np.ndarray:
    import SimpleITK as sitk

    return sitk.GetArrayFromImage(sitk.ReadImage(str(path))).astype(np.uint8)


CARDIAC_SEGMENTS = [("Right ventricle", (0.85, 0.4, 0.3), ""),
                    ("Myocardium", (0.95, 0.84, 0.57), MYOCARDIUM_TERMINOLOGY),
                    ("Left ventricle", (0.5, 0.68, 0.5), HEART_TERMINOLOGY)]


def moving_phantom(frames: int = 5, shape_kji: tuple[int, int, int] = (4, 24, 20), seed: int = 0,
                   shift: float = 0.0) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """A beating phantom: a bright disc (class 2, "Left ventricle") in a ring (class 1, "Myocardium")
    whose radius shrinks and grows over the frames, on noise. (frames [k, j, i] int16, labels uint8)."""
    rng = np.random.default_rng(seed)
    k, j, i = np.meshgrid(*[np.arange(n) for n in shape_kji], indexing="ij")
    r = np.hypot(j - shape_kji[1] / 2 - shift, i - shape_kji[2] / 2)
    images, labels = [], []
    for t in range(frames):
        radius = 5.0 + 2.0 * np.cos(2 * np.pi * t / frames)
        label = np.zeros(shape_kji, np.uint8)
        label[r < radius + 2.5] = 1
        label[r < radius] = 2
        labels.append(label)
        images.append((label.astype(np.float64) * 300 + rng.normal(100, 15, shape_kji)).astype(np.int16))
    return images, labels


def snapshot(node: Any) -> dict[str, Any]:
    """Everything about a segmentation node that an action must not change: modification times, the
    segments' names, colours, tags and voxels, and the bytes of the node written as ``.seg.nrrd``."""
    import slicer
    from vtk.util.numpy_support import vtk_to_numpy

    segmentation = node.GetSegmentation()
    segments = []
    for index in range(segmentation.GetNumberOfSegments()):
        segment_id = segmentation.GetNthSegmentID(index)
        segment = segmentation.GetSegment(segment_id)
        labelmap = segment.GetRepresentation("Binary labelmap")
        voxels = vtk_to_numpy(labelmap.GetPointData().GetScalars()).tobytes() if labelmap else b""
        segments.append((segment_id, segment.GetName(), tuple(segment.GetColor()), segment.GetTerminology(),
                         segment.GetLabelValue(),
                         labelmap.GetExtent() if labelmap else None, hashlib.sha1(voxels).hexdigest()))
    # Writing a segmentation may merge its layers in memory: write a copy, never the node itself.
    scratch = slicer.vtkMRMLScene()
    copy = scratch.AddNewNodeByClass("vtkMRMLSegmentationNode")
    copy.GetSegmentation().DeepCopy(segmentation)
    storage = slicer.vtkMRMLSegmentationStorageNode()
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "snapshot.seg.nrrd")
        storage.SetFileName(path)
        assert storage.WriteData(copy)
        file_digest = hashlib.sha1(Path(path).read_bytes()).hexdigest()
    display = node.GetDisplayNode()
    return {"mtime": node.GetMTime(), "segmentation_mtime": segmentation.GetMTime(),
            "display_mtime": display.GetMTime() if display else None, "segments": segments, "file": file_digest,
            "name": node.GetName(), "reference": node.GetNodeReferenceID("referenceImageGeometryRef"),
            "geometry": node.GetSegmentation().GetConversionParameter("Reference image geometry")}
