"""What the Qt-free logic needs from Slicer: the scene and a few module logics.

In Slicer, :meth:`SlicerServices.from_slicer` takes them from the running application. In tests,
they are made from ``slicer-core`` (a real MRML scene and real module logics, no Qt).
Nothing here imports ``slicer`` or ``qt`` at import time. Messages of the Qt-free modules are plain
English; the widget translates what it shows with ``slicer.i18n.tr``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

MODULE_NAME = "PLCLSegmentation"

#: Node attribute marking a node this module created (a prediction, an uncertainty map, a plot...).
#: Nodes without it belong to the user and are never modified or removed.
OWNER_ATTRIBUTE = "PLCLSegmentation.Output"


#: Application settings key of the Python interpreter that runs the engine ("" : Slicer's own).
PYTHON_SETTING = "PLCLSegmentation/PythonInterpreter"


class PLCLError(RuntimeError):
    """A problem the user can fix, reported as one clear line."""


class MemorySettings:
    """Application settings kept in memory, with QSettings' ``value``/``setValue`` (tests, scripts)."""

    def __init__(self) -> None:
        self.values: dict[str, Any] = {}

    def value(self, key: str, default: Any = None) -> Any:
        return self.values.get(key, default)

    def setValue(self, key: str, value: Any) -> None:  # noqa: N802 (QSettings' name)
        self.values[key] = value


@dataclass
class SlicerServices:
    """The MRML scene and the module logics the logic works with."""

    scene: Any  # vtkMRMLScene
    segmentations: Any  # vtkSlicerSegmentationsModuleLogic
    #: The user's application settings on this machine (``qt.QSettings`` in Slicer), not the scene: a
    #: scene file is data from anyone, and what it names must never be run.
    settings: Any = field(default_factory=MemorySettings)
    #: vtkSlicerSequencesLogic: moves a sequence browser's proxy nodes (cine series); None where absent.
    sequences: Any = None

    @classmethod
    def from_slicer(cls) -> SlicerServices:
        import qt
        import slicer

        sequences = getattr(slicer.modules, "sequences", None)
        return cls(scene=slicer.mrmlScene, segmentations=slicer.modules.segmentations.logic(), settings=qt.QSettings(),
                   sequences=sequences.logic() if sequences is not None else None)

    def subject_hierarchy(self) -> Any:
        import slicer

        return slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(self.scene)


def is_owned(node: Any) -> bool:
    """True if this module created ``node``."""
    return node is not None and bool(node.GetAttribute(OWNER_ATTRIBUTE))


def mark_owned(node: Any, kind: str) -> None:
    node.SetAttribute(OWNER_ATTRIBUTE, kind)
